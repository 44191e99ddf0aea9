"""Observability adapters: the decision log."""

from gatehouse.observability.decision_log import FIELDS, DecisionLog

__all__ = ["FIELDS", "DecisionLog"]
