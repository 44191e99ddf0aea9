"""Authorizers: every admin action is a gatehouse decision against the active bundle.

`LocalAuthorizer` maps the system of record through the bundle's mapping.yaml into a
`DecisionState` of its own and asks the engine. `RemoteAuthorizer` asks a running decision
server, passing `at_least_revision` = the SoR revision the action is authorized at, so the
answer never comes from data older than what the admin layer itself sees. Both fail closed:
any error is a refusal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from gatehouse.bundle.loader import Bundle
from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import parse_object, parse_subject
from gatehouse.sor.store import SystemOfRecord
from gatehouse.sync.mapping import TupleMapping
from gatehouse.sync.worker import Projection
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc


@dataclass
class Proof:
    """One step of an explanation (the engine's or the server's proof tree)."""

    label: str
    allowed: bool
    children: list[Proof] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    allowed: bool
    revision: int
    error: str = ""  # why no decision could be made (then allowed is False)


class Authorizer(Protocol):
    def check(self, subject: str, permission: str, resource: str, revision: int) -> Answer: ...

    def explain(
        self, subject: str, permission: str, resource: str, revision: int
    ) -> tuple[Answer, Proof]: ...


class LocalAuthorizer:
    """Decisions from the bundle's schema over the SoR's rows, mapped like the sync worker
    does. The state is rebuilt whenever the SoR's revision moved."""

    def __init__(self, sor: SystemOfRecord, bundle: Bundle, mapping: TupleMapping) -> None:
        self.sor = sor
        self.bundle = bundle
        self.projection = Projection(mapping, bundle.schema)
        self._state: DecisionState | None = None
        self._lock = threading.Lock()

    def state(self) -> DecisionState:
        with self._lock:
            head = self.sor.revision()
            st = self._state
            if st is not None and st.data_ready and st.store.current.revision == head:
                return st
            rev, counts = self.projection.read(self.sor, count=False)
            st = DecisionState()
            m = self.bundle.manifest
            st.activate_policy(self.bundle.schema, m.name, m.revision, self.bundle.digest)
            st.load_data(list(counts), rev)
            self._state = st
            return st

    def check(self, subject: str, permission: str, resource: str, revision: int) -> Answer:
        try:
            st = self.state()
            view = st.view()
            d = view.policy.evaluator.check(
                view.snapshot, parse_subject(subject), permission, parse_object(resource)
            )
            return Answer(d.allowed, d.revision)
        except Exception as e:  # fail closed
            return Answer(False, 0, f"{type(e).__name__}: {e}")

    def explain(
        self, subject: str, permission: str, resource: str, revision: int
    ) -> tuple[Answer, Proof]:
        try:
            view = self.state().view()
            ex = view.policy.evaluator.explain(
                view.snapshot, parse_subject(subject), permission, parse_object(resource)
            )
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            return Answer(False, 0, msg), Proof(msg, False)

        def conv(n: object) -> Proof:
            return Proof(
                getattr(n, "label", ""),
                bool(getattr(n, "allowed", False)),
                [conv(c) for c in getattr(n, "children", [])],
            )

        return Answer(ex.decision.allowed, ex.decision.revision), conv(ex.proof)


class RemoteAuthorizer:
    """Decisions from a running decision server (`--addr HOST:PORT`)."""

    def __init__(self, addr: str, timeout: float = 10.0) -> None:
        self.addr = addr
        self.timeout = timeout
        self._channel = grpc.insecure_channel(addr)
        self._stub = pb_grpc.DecisionServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def check(self, subject: str, permission: str, resource: str, revision: int) -> Answer:
        try:
            r = self._stub.Check(
                pb.CheckRequest(
                    subject=subject,
                    permission=permission,
                    resource=resource,
                    at_least_revision=max(revision, 0),
                ),
                timeout=self.timeout,
            )
            return Answer(bool(r.allowed), int(r.revision))
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            return Answer(False, 0, f"decision server {self.addr}: {code}: {details}")

    def explain(
        self, subject: str, permission: str, resource: str, revision: int
    ) -> tuple[Answer, Proof]:
        try:
            r = self._stub.Explain(
                pb.ExplainRequest(
                    subject=subject,
                    permission=permission,
                    resource=resource,
                    at_least_revision=max(revision, 0),
                ),
                timeout=self.timeout,
            )
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
            msg = f"decision server {self.addr}: {code}"
            return Answer(False, 0, msg), Proof(msg, False)

        def conv(n: pb.ProofNode) -> Proof:
            return Proof(n.label, n.allowed, [conv(c) for c in n.children])

        return Answer(bool(r.allowed), int(r.revision)), conv(r.proof)
