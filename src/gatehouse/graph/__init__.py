"""The relationship graph: id grammar, tuples, deltas and immutable revisioned snapshots. Pure."""

from gatehouse.graph.store import DeltaError, GraphStore, Interner, Snapshot
from gatehouse.graph.tuples import (
    Delta,
    InvalidReference,
    ObjectRef,
    SubjectRef,
    Tuple,
    parse_object,
    parse_subject,
    parse_tuple,
)

__all__ = [
    "Delta",
    "DeltaError",
    "GraphStore",
    "Interner",
    "InvalidReference",
    "ObjectRef",
    "Snapshot",
    "SubjectRef",
    "Tuple",
    "parse_object",
    "parse_subject",
    "parse_tuple",
]
