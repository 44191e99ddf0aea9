"""Typed syntax tree of the schema language (a subset of SpiceDB's schema DSL)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pos:
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class TypeRef:
    """One allowed subject type of a relation: `user`, `group#member` or `user:*`."""

    type: str
    relation: str | None = None
    wildcard: bool = False
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        if self.wildcard:
            return f"{self.type}:*"
        if self.relation:
            return f"{self.type}#{self.relation}"
        return self.type


# Permission expressions -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """A relation or permission of the same definition."""

    name: str
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Arrow:
    """`tupleset->computed`: follow relation `tupleset`, then evaluate `computed` there."""

    tupleset: str
    computed: str
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return f"{self.tupleset}->{self.computed}"


@dataclass(frozen=True, slots=True)
class Union:
    children: tuple[Expr, ...]
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return "(" + " + ".join(str(c) for c in self.children) + ")"


@dataclass(frozen=True, slots=True)
class Intersection:
    children: tuple[Expr, ...]
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return "(" + " & ".join(str(c) for c in self.children) + ")"


@dataclass(frozen=True, slots=True)
class Exclusion:
    base: Expr
    subtract: Expr
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return f"({self.base} - {self.subtract})"


@dataclass(frozen=True, slots=True)
class Nil:
    """`nil`: the empty set (a permission that nobody holds)."""

    pos: Pos = field(default=Pos(0, 0), compare=False)

    def __str__(self) -> str:
        return "nil"


Expr = Ref | Arrow | Union | Intersection | Exclusion | Nil


@dataclass(frozen=True, slots=True)
class RelationDef:
    name: str
    allowed: tuple[TypeRef, ...]
    pos: Pos = field(default=Pos(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class PermissionDef:
    name: str
    expr: Expr
    pos: Pos = field(default=Pos(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    relations: dict[str, RelationDef]
    permissions: dict[str, PermissionDef]
    pos: Pos = field(default=Pos(0, 0), compare=False)

    def member(self, name: str) -> RelationDef | PermissionDef | None:
        return self.relations.get(name) or self.permissions.get(name)


@dataclass(frozen=True, slots=True)
class Schema:
    definitions: dict[str, Definition]
