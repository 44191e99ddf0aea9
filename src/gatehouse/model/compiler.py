"""Validate a parsed schema and compile it into evaluation plans the engine walks."""

from __future__ import annotations

from dataclasses import dataclass

from gatehouse.model.ast import (
    Arrow,
    Definition,
    Exclusion,
    Expr,
    Intersection,
    Nil,
    Pos,
    Ref,
    RelationDef,
    Schema,
    TypeRef,
    Union,
)
from gatehouse.model.errors import SchemaError
from gatehouse.model.parser import parse_schema

# Plans ------------------------------------------------------------------------
# A plan is an immutable tree. Leaves name stored relations by the key "type#relation",
# the same key the graph uses, so evaluation needs no schema lookups by string.


@dataclass(frozen=True, slots=True)
class RelPlan:
    """Read stored relation `key` (e.g. "fund#viewer")."""

    type: str
    name: str
    key: str
    usersets: tuple[tuple[str, str], ...]  # allowed (subject type, subject relation)
    wildcard_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Evaluate permission or relation `name` of the same object (resolved lazily: may recurse)."""

    type: str
    name: str


@dataclass(frozen=True, slots=True)
class ArrowPlan:
    """Follow stored relation `key` to each target object, then evaluate `computed` there."""

    type: str
    tupleset: str
    key: str
    target_types: tuple[str, ...]
    computed: str


@dataclass(frozen=True, slots=True)
class UnionPlan:
    children: tuple[Plan, ...]


@dataclass(frozen=True, slots=True)
class IntersectionPlan:
    children: tuple[Plan, ...]


@dataclass(frozen=True, slots=True)
class ExclusionPlan:
    base: Plan
    subtract: Plan


@dataclass(frozen=True, slots=True)
class NilPlan:
    pass


Plan = RelPlan | CallPlan | ArrowPlan | UnionPlan | IntersectionPlan | ExclusionPlan | NilPlan


class CompiledSchema:
    """A validated schema with one plan per (type, relation-or-permission). Immutable."""

    def __init__(self, schema: Schema, plans: dict[tuple[str, str], Plan], text: str) -> None:
        self.schema = schema
        self.text = text
        self._plans = plans
        self.types: frozenset[str] = frozenset(schema.definitions)

    def plan(self, type_name: str, name: str) -> Plan | None:
        return self._plans.get((type_name, name))

    def has_type(self, type_name: str) -> bool:
        return type_name in self.schema.definitions

    def is_relation(self, type_name: str, name: str) -> bool:
        d = self.schema.definitions.get(type_name)
        return d is not None and name in d.relations

    def is_permission_or_relation(self, type_name: str, name: str) -> bool:
        return (type_name, name) in self._plans

    def members(self, type_name: str) -> list[str]:
        d = self.schema.definitions.get(type_name)
        if d is None:
            return []
        return [*d.relations, *d.permissions]

    def check_tuple(
        self,
        resource_type: str,
        relation: str,
        subject_type: str,
        subject_relation: str | None,
        wildcard: bool,
    ) -> None:
        """Raise SchemaError unless the schema allows this tuple to be stored."""
        d = self.schema.definitions.get(resource_type)
        if d is None:
            raise SchemaError(f"unknown resource type {resource_type!r}")
        rel = d.relations.get(relation)
        if rel is None:
            what = "a permission" if relation in d.permissions else "not a relation"
            raise SchemaError(
                f"{resource_type}#{relation} is {what}: tuples can only write relations"
            )
        for t in rel.allowed:
            if t.type != subject_type:
                continue
            if wildcard and t.wildcard:
                return
            if not wildcard and not t.wildcard and t.relation == subject_relation:
                return
        shown = (
            f"{subject_type}:*"
            if wildcard
            else (f"{subject_type}#{subject_relation}" if subject_relation else subject_type)
        )
        allowed = " | ".join(str(t) for t in rel.allowed)
        raise SchemaError(
            f"{resource_type}#{relation} does not allow subject {shown} (allows {allowed})"
        )


def compile_schema(text: str, source: str = "schema") -> CompiledSchema:
    """Parse, validate and compile schema text. Raise SchemaError on any problem."""
    schema = parse_schema(text, source)
    _Validator(schema, source).run()
    plans: dict[tuple[str, str], Plan] = {}
    for d in schema.definitions.values():
        for rel in d.relations.values():
            plans[(d.name, rel.name)] = _rel_plan(d, rel)
        for perm in d.permissions.values():
            plans[(d.name, perm.name)] = _compile_expr(schema, d, perm.expr)
    return CompiledSchema(schema, plans, text)


def _rel_plan(d: Definition, rel: RelationDef) -> RelPlan:
    usersets = tuple((t.type, t.relation) for t in rel.allowed if t.relation)
    wild = tuple(t.type for t in rel.allowed if t.wildcard)
    return RelPlan(d.name, rel.name, f"{d.name}#{rel.name}", usersets, wild)


def _compile_expr(schema: Schema, d: Definition, e: Expr) -> Plan:
    if isinstance(e, Ref):
        rel = d.relations.get(e.name)
        return _rel_plan(d, rel) if rel is not None else CallPlan(d.name, e.name)
    if isinstance(e, Arrow):
        rel = d.relations[e.tupleset]
        targets = tuple(dict.fromkeys(t.type for t in rel.allowed))
        return ArrowPlan(d.name, e.tupleset, f"{d.name}#{e.tupleset}", targets, e.computed)
    if isinstance(e, Union):
        return UnionPlan(tuple(_compile_expr(schema, d, c) for c in e.children))
    if isinstance(e, Intersection):
        return IntersectionPlan(tuple(_compile_expr(schema, d, c) for c in e.children))
    if isinstance(e, Exclusion):
        return ExclusionPlan(_compile_expr(schema, d, e.base), _compile_expr(schema, d, e.subtract))
    return NilPlan()


class _Validator:
    def __init__(self, schema: Schema, source: str) -> None:
        self.schema = schema
        self.source = source

    def err(self, msg: str, pos: Pos) -> SchemaError:
        return SchemaError(msg, pos.line, pos.col, self.source)

    def run(self) -> None:
        for d in self.schema.definitions.values():
            for rel in d.relations.values():
                for t in rel.allowed:
                    self.check_typeref(d, rel, t)
            for perm in d.permissions.values():
                self.check_expr(d, perm.expr)
        self.check_ref_cycles()
        self.check_negative_cycles()

    def check_typeref(self, d: Definition, rel: RelationDef, t: TypeRef) -> None:
        target = self.schema.definitions.get(t.type)
        if target is None:
            raise self.err(f"relation {d.name}#{rel.name} allows unknown type {t.type!r}", t.pos)
        if t.relation is not None and target.member(t.relation) is None:
            raise self.err(
                f"relation {d.name}#{rel.name} allows {t}, but {t.type!r} has no {t.relation!r}",
                t.pos,
            )

    def check_expr(self, d: Definition, e: Expr) -> None:
        if isinstance(e, Ref):
            if d.member(e.name) is None:
                raise self.err(f"{d.name!r} has no relation or permission {e.name!r}", e.pos)
        elif isinstance(e, Arrow):
            rel = d.relations.get(e.tupleset)
            if rel is None:
                kind = "a permission" if e.tupleset in d.permissions else "unknown"
                raise self.err(
                    f"arrow {e}: {e.tupleset!r} is {kind}; an arrow must start at a relation of "
                    f"{d.name!r}",
                    e.pos,
                )
            for t in rel.allowed:
                if t.wildcard:
                    raise self.err(
                        f"arrow {e}: relation {d.name}#{e.tupleset} allows the wildcard {t}, "
                        "which an arrow cannot follow",
                        e.pos,
                    )
                if t.relation is not None:
                    raise self.err(
                        f"arrow {e}: relation {d.name}#{e.tupleset} allows the userset {t}; "
                        "arrows follow objects, not usersets",
                        e.pos,
                    )
                target = self.schema.definitions[t.type]
                if target.member(e.computed) is None:
                    raise self.err(
                        f"arrow {e}: {d.name}#{e.tupleset} can hold {t.type!r}, which has no "
                        f"relation or permission {e.computed!r}",
                        e.pos,
                    )
        elif isinstance(e, Union | Intersection):
            for c in e.children:
                self.check_expr(d, c)
        elif isinstance(e, Exclusion):
            self.check_expr(d, e.base)
            self.check_expr(d, e.subtract)
        elif not isinstance(e, Nil):  # pragma: no cover - exhaustive
            raise self.err(f"unsupported expression {e}", Pos(0, 0))

    def check_ref_cycles(self) -> None:
        """Reject permissions that reach themselves on the same object (never bottom out)."""
        for d in self.schema.definitions.values():
            edges = {
                p.name: _same_object_refs(p.expr) & set(d.permissions)
                for p in d.permissions.values()
            }
            self._find_ref_cycle(d, edges)

    def _find_ref_cycle(self, d: Definition, edges: dict[str, set[str]]) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for nxt in sorted(edges[name]):
                if state.get(nxt) == 1:
                    cyc = " -> ".join([*path[path.index(nxt) :], nxt])
                    raise self.err(
                        f"permission cycle in {d.name!r} never bottoms out: {cyc}",
                        d.permissions[nxt].pos,
                    )
                if nxt not in state:
                    visit(nxt, [*path, nxt])
            state[name] = 2

        for name in d.permissions:
            if name not in state:
                visit(name, [name])

    def check_negative_cycles(self) -> None:
        """Reject recursion through the subtracted side of an exclusion (no stable meaning)."""
        # Dependency graph over (type, member): edges from a member to what it reads,
        # flagged when read under a subtraction.
        deps: dict[tuple[str, str], list[tuple[tuple[str, str], bool]]] = {}
        for d in self.schema.definitions.values():
            for rel in d.relations.values():
                deps[(d.name, rel.name)] = [
                    ((t.type, t.relation), False) for t in rel.allowed if t.relation
                ]
            for perm in d.permissions.values():
                out: list[tuple[tuple[str, str], bool]] = []
                self._expr_deps(d, perm.expr, False, out)
                deps[(d.name, perm.name)] = out
        # Strongly connected components (Tarjan; recursion is fine: schemas are small).
        index: dict[tuple[str, str], int] = {}
        low: dict[tuple[str, str], int] = {}
        stack: list[tuple[str, str]] = []
        on: set[tuple[str, str]] = set()
        comp: dict[tuple[str, str], int] = {}
        counter = [0]

        def strong(v: tuple[str, str]) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w, _neg in deps.get(v, []):
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp[w] = index[v]
                    if w == v:
                        break

        for v in deps:
            if v not in index:
                strong(v)
        for v, edges in deps.items():
            for w, neg in edges:
                if neg and comp.get(v) == comp.get(w):
                    d = self.schema.definitions[v[0]]
                    p = d.permissions.get(v[1])
                    pos = p.pos if p else Pos(0, 0)
                    raise self.err(
                        f"{v[0]}#{v[1]} depends on itself through the subtracted side of an "
                        "exclusion; such recursion has no stable meaning",
                        pos,
                    )

    def _expr_deps(
        self, d: Definition, e: Expr, neg: bool, out: list[tuple[tuple[str, str], bool]]
    ) -> None:
        if isinstance(e, Ref):
            out.append(((d.name, e.name), neg))
        elif isinstance(e, Arrow):
            out.append(((d.name, e.tupleset), neg))
            for t in d.relations[e.tupleset].allowed:
                out.append(((t.type, e.computed), neg))
        elif isinstance(e, Union | Intersection):
            for c in e.children:
                self._expr_deps(d, c, neg, out)
        elif isinstance(e, Exclusion):
            self._expr_deps(d, e.base, neg, out)
            self._expr_deps(d, e.subtract, True, out)


def _same_object_refs(e: Expr) -> set[str]:
    if isinstance(e, Ref):
        return {e.name}
    if isinstance(e, Union | Intersection):
        out: set[str] = set()
        for c in e.children:
            out |= _same_object_refs(c)
        return out
    if isinstance(e, Exclusion):
        return _same_object_refs(e.base) | _same_object_refs(e.subtract)
    return set()
