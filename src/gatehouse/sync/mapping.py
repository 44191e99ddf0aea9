"""Declarative mapping from system-of-record rows to relationship tuples.

A mapping is YAML (see docs/sync.md):

    version: 1
    tables:
      memberships:
        - tuple: "company:{tenant_id}#frozen@user:{user_id}"
          when: {status: frozen}
      access_grants:
        - tuple: "fund:{resource_id}#{level}@{subject}"
          when: {resource_type: fund, resource_id: {not: ""}}
          vars:
            subject: {by: subject_type, cases: {user: "user:{subject_id}",
                                                group: "group:{subject_id}#member"}}

Each rule maps one row to at most one tuple, looking at that row only, so a changed row
maps to exact tuple writes and deletes. `when` holds conditions on columns: a value
(equality), a list (one of), `{not: value-or-list}`. `{col}` in a template is the column's
value; `{name}` of a var is the template of the case picked by the column `by`. A row that
yields a malformed tuple is a `MappingError` (the worker skips and counts it).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import yaml

from gatehouse.graph.tuples import ID_PATTERN, REL_PATTERN, TYPE_PATTERN


class MappingError(ValueError):
    pass


_FMT = string.Formatter()
# The tuple grammar of gatehouse.graph.tuples, matched once per rendered tuple (the hot path
# of an initial sync): groups type, id, relation, subject type, subject id, subject relation.
_TUPLE_RE = re.compile(
    rf"({TYPE_PATTERN}):({ID_PATTERN})#({REL_PATTERN})@({TYPE_PATTERN}):({ID_PATTERN}|\*)"
    rf"(?:#({REL_PATTERN}))?"
)
Checker = Callable[[str, str, str, "str | None", bool], None]
_ID_RE = r"[A-Za-z0-9@._\-/|+*]*"


@functools.lru_cache(maxsize=1024)
def _fields(template: str) -> tuple[str, ...]:
    out = []
    for _lit, name, spec, conv in _FMT.parse(template):
        if name is None:
            continue
        if spec or conv or not name.isidentifier():
            raise MappingError(f"template {template!r}: only plain {{column}} fields are allowed")
        out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class Cond:
    column: str
    values: frozenset[Any]
    negate: bool

    def test(self, row: Mapping[str, Any]) -> bool:
        v = row.get(self.column)
        if v is None:
            v = ""  # '' and NULL both mean "not set"
        return (v in self.values) != self.negate

    def constant(self) -> Any:
        """The single value this condition forces, if any (used to invert the mapping)."""
        if self.negate or len(self.values) != 1:
            return None
        return next(iter(self.values))


@dataclass(frozen=True)
class Var:
    by: str
    cases: Mapping[str, str]


@dataclass(frozen=True)
class Rule:
    table: str
    template: str
    when: tuple[Cond, ...]
    vars: Mapping[str, Var] = field(default_factory=dict)

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(c.test(row) for c in self.when)

    def render(self, row: Mapping[str, Any], check: Callable[[re.Match[str]], None]) -> str:
        text = self.template
        for name, var in self.vars.items():
            case = row.get(var.by)
            sub = var.cases.get(str(case))
            if sub is None:
                raise MappingError(f"{self.table}: no case for {var.by}={case!r} in var {name!r}")
            text = text.replace("{" + name + "}", sub)
        values: dict[str, str] = {}
        for name in _fields(text):
            v = row.get(name)
            if v is None or v == "":
                raise MappingError(f"{self.table}: column {name!r} is empty in {self.template!r}")
            values[name] = str(v)
        out = text.format_map(values)
        m = _TUPLE_RE.fullmatch(out)
        if m is None or (m.group(5) == "*" and m.group(6)):
            raise MappingError(f"{self.table}: row maps to a malformed tuple {out!r}")
        check(m)
        return out

    def patterns(self) -> list[tuple[re.Pattern[str], dict[str, str]]]:
        """Regexes matching the tuples this rule produces, with the column values each var
        case implies (for inverting the mapping)."""
        names = list(self.vars)
        out = []
        for combo in product(*(list(self.vars[n].cases.items()) for n in names)):
            text = self.template
            implied: dict[str, str] = {}
            for n, (case, sub) in zip(names, combo, strict=True):
                text = text.replace("{" + n + "}", sub)
                implied[self.vars[n].by] = case
            regex, seen = "", set()
            for lit, name, _s, _c in _FMT.parse(text):
                regex += re.escape(lit)
                if name is None:
                    continue
                if name in seen:
                    regex += f"(?P={name})"
                else:
                    seen.add(name)
                    regex += f"(?P<{name}>{_ID_RE})"
            out.append((re.compile(regex + r"\Z"), implied))
        return out


@dataclass
class TupleMapping:
    rules: dict[str, list[Rule]]
    # Optional schema check (CompiledSchema.check_tuple); results are memoised by the
    # tuple's shape (types and relations), so it costs one dict lookup per tuple.
    checker: Checker | None = None
    _shapes: dict[tuple[str, str, str, str | None, bool], str | None] = field(default_factory=dict)

    def with_checker(self, checker: Checker | None) -> TupleMapping:
        return TupleMapping(self.rules, checker)

    def _check(self, m: re.Match[str]) -> None:
        if self.checker is None:
            return
        shape = (m.group(1), m.group(3), m.group(4), m.group(6), m.group(5) == "*")
        err = self._shapes.get(shape, "")
        if err == "":
            try:
                self.checker(*shape)
                err = None
            except ValueError as e:
                err = str(e)
            self._shapes[shape] = err
        if err is not None:
            raise MappingError(f"tuple {m.group(0)!r}: {err}")

    @property
    def tables(self) -> list[str]:
        return list(self.rules)

    def tuples(self, table: str, row: Mapping[str, Any] | None) -> list[str]:
        """The tuples one row maps to (none for an unmapped table or a None row)."""
        if row is None:
            return []
        return [r.render(row, self._check) for r in self.rules.get(table, ()) if r.matches(row)]

    def invert(self, tuples: Iterable[str]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        """Rows that map to `tuples` (first matching rule wins); and the tuples no rule
        produces. Rows of one table that share a key are merged."""
        from gatehouse.sor.tables import CAPTURED

        compiled = [(rule, rule.patterns()) for rs in self.rules.values() for rule in rs]
        rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        left: list[str] = []
        for t in tuples:
            for rule, variants in compiled:
                hit = None
                for pat, implied in variants:
                    m = pat.match(t)
                    if m:
                        hit = {**implied, **m.groupdict()}
                        break
                if hit is None:
                    continue
                for c in rule.when:
                    k = c.constant()
                    if k is not None and c.column not in hit:
                        hit[c.column] = k
                row = hit
                if not rule.matches(row):
                    continue
                table = CAPTURED[rule.table]
                key = tuple(row.get(c.name, "") for c in table.primary_key.columns)
                merged = rows.setdefault(rule.table, {}).setdefault(key, {})
                for k2, v in row.items():
                    if k2 in merged and merged[k2] != v:
                        raise MappingError(
                            f"{t!r}: {rule.table}.{k2} would be both {merged[k2]!r} and {v!r}"
                        )
                    merged[k2] = v
                break
            else:
                left.append(t)
        return {name: list(by_key.values()) for name, by_key in rows.items()}, left


def reference_columns(table: str) -> Collection[str] | None:
    """Columns of a table of the reference system of record (None: no such table)."""
    from gatehouse.sor.tables import CAPTURED

    t = CAPTURED.get(table)
    return None if t is None else list(t.columns.keys())


def parse_mapping(
    text: str,
    source: str = "mapping",
    columns: Callable[[str], Collection[str] | None] = reference_columns,
) -> TupleMapping:
    """Parse and validate a mapping; `columns` names the columns of a table (by default the
    reference SoR's; the worker passes the database's own, so any tables can be mapped)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MappingError(f"{source}: not YAML: {e}") from e
    if not isinstance(doc, dict) or doc.get("version") != 1 or "tables" not in doc:
        raise MappingError(f"{source}: expected a mapping with version: 1 and tables")
    tables = doc["tables"]
    if not isinstance(tables, dict):
        raise MappingError(f"{source}: tables must be a mapping of table -> rules")
    rules: dict[str, list[Rule]] = {}
    for tname, trules in tables.items():
        found = columns(str(tname))
        if found is None:
            raise MappingError(f"{source}: unknown table {tname!r}")
        cols = set(found)
        if not isinstance(trules, list):
            raise MappingError(f"{source}: {tname}: rules must be a list")
        for i, r in enumerate(trules):
            where = f"{source}: {tname}[{i}]"
            if not isinstance(r, dict) or not isinstance(r.get("tuple"), str):
                raise MappingError(f"{where}: a rule needs a 'tuple' template")
            unknown = set(r) - {"tuple", "when", "vars"}
            if unknown:
                raise MappingError(f"{where}: unknown keys {sorted(unknown)}")
            conds = []
            for col, spec in (r.get("when") or {}).items():
                if col not in cols:
                    raise MappingError(f"{where}: when: unknown column {col!r}")
                negate = isinstance(spec, dict)
                if negate:
                    if set(spec) != {"not"}:
                        raise MappingError(f"{where}: when.{col}: only {{not: ...}} is allowed")
                    spec = spec["not"]
                vals = spec if isinstance(spec, list) else [spec]
                conds.append(Cond(col, frozenset("" if v is None else v for v in vals), negate))
            vars_: dict[str, Var] = {}
            for vname, vspec in (r.get("vars") or {}).items():
                if (
                    not isinstance(vspec, dict)
                    or vspec.get("by") not in cols
                    or not isinstance(vspec.get("cases"), dict)
                ):
                    raise MappingError(f"{where}: var {vname!r} needs by: COLUMN and cases: {{}}")
                cases = {str(k): str(v) for k, v in vspec["cases"].items()}
                for sub in cases.values():
                    bad = [f for f in _fields(sub) if f not in cols]
                    if bad:
                        raise MappingError(f"{where}: var {vname!r}: unknown columns {bad}")
                vars_[vname] = Var(vspec["by"], cases)
            bad = [f for f in _fields(r["tuple"]) if f not in cols and f not in vars_]
            if bad:
                raise MappingError(f"{where}: template uses unknown columns {bad}")
            rules.setdefault(tname, []).append(Rule(tname, r["tuple"], tuple(conds), vars_))
    return TupleMapping(rules)


def load_mapping(
    path: str, columns: Callable[[str], Collection[str] | None] = reference_columns
) -> TupleMapping:
    with open(path, encoding="utf-8") as f:
        return parse_mapping(f.read(), path, columns)
