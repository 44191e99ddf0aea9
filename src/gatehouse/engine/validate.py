"""Check tuples against a compiled schema before they may enter a graph."""

from __future__ import annotations

from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import CompiledSchema
from gatehouse.model.errors import SchemaError


def validate_delta(schema: CompiledSchema, delta: Delta) -> None:
    """Raise SchemaError naming the first tuple the schema does not allow (writes only:
    deleting a tuple the schema no longer knows is always safe)."""
    for t in delta.writes:
        try:
            schema.check_tuple(
                t.resource.type, t.relation, t.subject.type, t.subject.relation, t.subject.wildcard
            )
        except SchemaError as e:
            raise SchemaError(f"tuple {t}: {e.message}") from None
