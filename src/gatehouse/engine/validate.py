"""Check tuples against a compiled schema before they may enter a graph."""

from __future__ import annotations

from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import CompiledSchema
from gatehouse.model.errors import SchemaError


def validate_delta(schema: CompiledSchema, delta: Delta) -> None:
    """Raise SchemaError naming the first tuple the schema does not allow (writes only:
    deleting a tuple the schema no longer knows is always safe)."""
    # Whether a tuple is allowed depends only on its shape; a snapshot of a million tuples has
    # a few dozen shapes, so each is checked once.
    seen: set[tuple[str, str, str, str | None, bool]] = set()
    for t in delta.writes:
        s = t.subject
        shape = (t.resource.type, t.relation, s.type, s.relation, s.id == "*")
        if shape in seen:
            continue
        try:
            schema.check_tuple(*shape)
        except SchemaError as e:
            raise SchemaError(f"tuple {t}: {e.message}") from None
        seen.add(shape)
