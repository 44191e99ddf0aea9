"""The gRPC adapter: DecisionService servicer, health, reflection and Prometheus metrics."""

from gatehouse.server.app import SERVICE_NAME, ServerHandle, serve
from gatehouse.server.loading import load_static, read_tuples
from gatehouse.server.servicer import DecisionServicer
from gatehouse.server.status import Freshness, Rejection, RejectionLog

__all__ = [
    "SERVICE_NAME",
    "DecisionServicer",
    "Freshness",
    "Rejection",
    "RejectionLog",
    "ServerHandle",
    "load_static",
    "read_tuples",
    "serve",
]
