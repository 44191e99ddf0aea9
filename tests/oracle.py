"""A deliberately naive reference evaluator for engine tests.

Shares no code with `gatehouse.engine`: it reads the parsed schema AST only and works on
plain strings. For every object and every relation/permission it computes the full set of
users holding it, as a least fixpoint of set equations over the whole graph:

- a relation holds its plain users, *every* user of the universe when it has `user:*`, and
  the members of every userset subject (`group:g#member`);
- `+`, `&`, `-` are set union, intersection and difference;
- `rel->perm` is the union of `perm` over the objects stored in `rel`.

Members are evaluated stratum by stratum (a member is placed strictly above whatever it
subtracts), each stratum iterated from empty sets until nothing changes, which is correct
for schemas whose exclusions are not recursive.

Wildcards are materialised over a finite universe of users: the users named in the graph
plus any extra ids the caller passes (e.g. one user that appears nowhere, to stand for
"anybody else").
"""

from __future__ import annotations

from collections.abc import Iterable

from gatehouse.model import parse_schema
from gatehouse.model.ast import (
    Arrow,
    Definition,
    Exclusion,
    Expr,
    Intersection,
    Nil,
    Ref,
    Union,
)

Key = tuple[str, str]  # (object "type:id", member name)


def _split_tuple(text: str) -> tuple[str, str, str, str | None]:
    """'doc:d#viewer@group:g#member' -> ('doc:d', 'viewer', 'group:g', 'member')."""
    left, subject = text.strip().split("@", 1)
    obj, rel = left.split("#", 1)
    if "#" in subject:
        sobj, srel = subject.split("#", 1)
        return obj, rel, sobj, srel
    return obj, rel, subject, None


def _type(obj: str) -> str:
    return obj.split(":", 1)[0]


class Oracle:
    """Every (object, member) -> frozenset of subjects, computed eagerly.

    Subjects are concrete users ("user:ann") and usersets ("group:g#member"); a userset
    holds whatever a relation stores it in directly or through other usersets. Wildcards
    grant users of `subject_type` only, never usersets.
    """

    def __init__(
        self,
        schema_text: str,
        tuples: Iterable[str],
        subject_type: str = "user",
        extra_subjects: Iterable[str] = (),
    ) -> None:
        self.schema = parse_schema(schema_text)
        self.defs: dict[str, Definition] = dict(self.schema.definitions)
        self.subject_type = subject_type
        parsed = sorted({_split_tuple(t) for t in tuples})
        # stored[(obj, rel)] -> list of (subject object, subject relation or None)
        self.stored: dict[Key, list[tuple[str, str | None]]] = {}
        objects: set[str] = set()
        universe: set[str] = set(extra_subjects)
        for obj, rel, sobj, srel in parsed:
            self.stored.setdefault((obj, rel), []).append((sobj, srel))
            objects.add(obj)
            if not sobj.endswith(":*"):
                objects.add(sobj)
                if _type(sobj) == subject_type and srel is None:
                    universe.add(sobj)
        self.universe: frozenset[str] = frozenset(universe)
        self.objects = sorted(objects)
        self.values: dict[Key, frozenset[str]] = {}
        self._solve()

    # strata ---------------------------------------------------------------------
    def _deps(self, tname: str, member: str) -> list[tuple[Key, bool]]:
        d = self.defs[tname]
        if member in d.relations:
            return [
                ((t.type, t.relation), False) for t in d.relations[member].allowed if t.relation
            ]
        out: list[tuple[Key, bool]] = []

        def walk(e: Expr, neg: bool) -> None:
            if isinstance(e, Ref):
                out.append(((tname, e.name), neg))
            elif isinstance(e, Arrow):
                out.append(((tname, e.tupleset), neg))
                for t in d.relations[e.tupleset].allowed:
                    if self.defs[t.type].member(e.computed) is not None:
                        out.append(((t.type, e.computed), neg))
            elif isinstance(e, Union | Intersection):
                for c in e.children:
                    walk(c, neg)
            elif isinstance(e, Exclusion):
                walk(e.base, neg)
                walk(e.subtract, True)

        walk(d.permissions[member].expr, False)
        return out

    def _strata(self) -> dict[Key, int]:
        nodes = [(t, m) for t, d in self.defs.items() for m in [*d.relations, *d.permissions]]
        level = dict.fromkeys(nodes, 0)
        deps = {n: self._deps(*n) for n in nodes}
        for _ in range(len(nodes) + 2):
            changed = False
            for n in nodes:
                for w, neg in deps[n]:
                    want = level[w] + (1 if neg else 0)
                    if want > level[n]:
                        level[n] = want
                        changed = True
            if not changed:
                return level
        raise ValueError("negative cycle: the oracle needs a stratified schema")

    # evaluation -------------------------------------------------------------------
    def _val(self, obj: str, member: str) -> frozenset[str]:
        return self.values.get((obj, member), frozenset())

    def _eval_relation(self, obj: str, rel: str) -> frozenset[str]:
        out: set[str] = set()
        for sobj, srel in self.stored.get((obj, rel), []):
            if srel is not None:
                out.add(f"{sobj}#{srel}")  # the userset itself is a subject too
                out |= self._val(sobj, srel)
            elif sobj == f"{self.subject_type}:*":
                out |= self.universe
            elif _type(sobj) == self.subject_type:
                out.add(sobj)
        return frozenset(out)

    def _eval_expr(self, obj: str, e: Expr) -> frozenset[str]:
        if isinstance(e, Ref):
            return self._val(obj, e.name)
        if isinstance(e, Arrow):
            out: set[str] = set()
            for sobj, srel in self.stored.get((obj, e.tupleset), []):
                if srel is None and not sobj.endswith(":*"):
                    out |= self._val(sobj, e.computed)
            return frozenset(out)
        if isinstance(e, Union):
            acc: set[str] = set()
            for c in e.children:
                acc |= self._eval_expr(obj, c)
            return frozenset(acc)
        if isinstance(e, Intersection):
            res = self._eval_expr(obj, e.children[0])
            for c in e.children[1:]:
                res &= self._eval_expr(obj, c)
            return res
        if isinstance(e, Exclusion):
            return self._eval_expr(obj, e.base) - self._eval_expr(obj, e.subtract)
        assert isinstance(e, Nil)
        return frozenset()

    def _solve(self) -> None:
        level = self._strata()
        for stratum in sorted(set(level.values())):
            keys = [
                (obj, m)
                for obj in self.objects
                if _type(obj) in self.defs
                for m in [*self.defs[_type(obj)].relations, *self.defs[_type(obj)].permissions]
                if level[(_type(obj), m)] == stratum
            ]
            while True:
                changed = False
                for obj, m in keys:
                    d = self.defs[_type(obj)]
                    if m in d.relations:
                        new = self._eval_relation(obj, m)
                    else:
                        new = self._eval_expr(obj, d.permissions[m].expr)
                    if new != self._val(obj, m):
                        self.values[(obj, m)] = new
                        changed = True
                if not changed:
                    break

    # queries ----------------------------------------------------------------------
    def subjects(self, obj: str, member: str) -> frozenset[str]:
        """Users of the universe (and usersets) holding `member` on `obj`."""
        return self._val(obj, member)

    def check(self, subject: str, member: str, obj: str) -> bool:
        return subject in self._val(obj, member)

    def allowed(self, subject: str, member: str, tname: str) -> set[str]:
        """Ids (without the type prefix) of objects of `tname` on which `subject` holds it."""
        return {
            o.split(":", 1)[1]
            for o in self.objects
            if _type(o) == tname and subject in self._val(o, member)
        }
