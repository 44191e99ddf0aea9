"""Check tuples against a compiled schema before they may enter a graph."""

from __future__ import annotations

from gatehouse.graph.tuples import Delta, Tuple
from gatehouse.model.compiler import CompiledSchema
from gatehouse.model.errors import SchemaError


class ShapeCheck:
    """Checks tuples one at a time against a schema. Whether a tuple is allowed depends only
    on its shape; a snapshot of millions of tuples has a few dozen shapes, so each is checked
    once."""

    def __init__(self, schema: CompiledSchema) -> None:
        self.schema = schema
        self.seen: set[tuple[str, str, str, str | None, bool]] = set()

    def check(self, t: Tuple) -> None:
        s = t.subject
        shape = (t.resource.type, t.relation, s.type, s.relation, s.id == "*")
        if shape in self.seen:
            return
        try:
            self.schema.check_tuple(*shape)
        except SchemaError as e:
            raise SchemaError(f"tuple {t}: {e.message}") from None
        self.seen.add(shape)


def validate_delta(schema: CompiledSchema, delta: Delta) -> None:
    """Raise SchemaError naming the first tuple the schema does not allow (writes only:
    deleting a tuple the schema no longer knows is always safe)."""
    check = ShapeCheck(schema)
    for t in delta.writes:
        check.check(t)
