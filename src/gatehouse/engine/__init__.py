"""The decision engine: check, list-allowed, list-subjects and explain. Pure: no I/O."""

from gatehouse.engine.cursor import CursorCodec, InvalidCursor, page_after
from gatehouse.engine.evaluator import (
    DEFAULT_MAX_DEPTH,
    Decision,
    DepthExceeded,
    EngineError,
    Evaluator,
    Explanation,
    InvalidQuery,
    ProofNode,
)
from gatehouse.engine.state import DecisionState, NotReady, Policy, PolicyRollback, View
from gatehouse.engine.validate import validate_delta

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "CursorCodec",
    "Decision",
    "DecisionState",
    "DepthExceeded",
    "EngineError",
    "Evaluator",
    "Explanation",
    "InvalidCursor",
    "InvalidQuery",
    "NotReady",
    "Policy",
    "PolicyRollback",
    "ProofNode",
    "View",
    "page_after",
    "validate_delta",
]
