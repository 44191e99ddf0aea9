"""The gRPC DecisionService: a thin adapter from requests to the engine.

Every failure becomes a gRPC error; an error never carries allowed=true.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gatehouse.engine.cursor import CursorCodec, InvalidCursor
from gatehouse.engine.evaluator import (
    Decision,
    DepthExceeded,
    EngineError,
    InvalidQuery,
    ProofNode,
)
from gatehouse.engine.state import DecisionState, NotReady, View
from gatehouse.graph.tuples import (
    InvalidReference,
    ObjectRef,
    SubjectRef,
    parse_object,
    parse_subject,
)
from gatehouse.observability.decision_log import DecisionLog
from gatehouse.server.cache import CheckFn, direct_check
from gatehouse.server.fastpath import FastMethod
from gatehouse.server.metrics import ALLOW, DENY, Metrics
from gatehouse.server.status import Freshness, RejectionLog
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

MAX_BATCH = 1000
# Parsed subjects and resources are kept by their text (parsing is pure, refs are immutable,
# invalid text raises and is never kept); the table is emptied when it reaches this size.
PARSE_CACHE_SIZE = 65536
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000
DEFAULT_MAX_WAIT = 5.0
# Serialized Check responses kept by their fields; emptied when it reaches this size.
RESPONSE_CACHE_SIZE = 4096

T = TypeVar("T")


ERROR_DOMAIN = "gatehouse.dev"


class Abort(Exception):
    """Raised inside a handler; turned into one `context.abort` at the top."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def _status_for(e: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """The status code, message and `google.rpc.ErrorInfo` reason for a failure."""
    if isinstance(e, Abort):
        return e.code, e.message, e.reason
    if isinstance(e, InvalidReference):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e), "MALFORMED_ID"
    if isinstance(e, InvalidQuery):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e), "UNKNOWN_TYPE_OR_PERMISSION"
    if isinstance(e, InvalidCursor):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e), "INVALID_CURSOR"
    if isinstance(e, NotReady):
        return grpc.StatusCode.UNAVAILABLE, f"not ready: {e}", "NOT_READY"
    if isinstance(e, DepthExceeded):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e), e.code
    if isinstance(e, EngineError):
        return grpc.StatusCode.INTERNAL, f"{e.code}: {e}", e.code
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}", "INTERNAL"


def _empty_ping(payload: bytes) -> bytes | None:
    """Ping's wire path: an empty request (the usual one) is answered with an empty response,
    with no message built either way. So a Ping measures the server's floor, what every RPC
    on the fast path costs before its handler does anything."""
    return b"" if not payload else None


def _as_is(body: bytes) -> bytes:
    return body


def proof_to_pb(node: ProofNode) -> pb.ProofNode:
    return pb.ProofNode(
        label=node.label, allowed=node.allowed, children=[proof_to_pb(c) for c in node.children]
    )


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(
        self,
        state: DecisionState,
        codec: CursorCodec,
        metrics: Metrics | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
        checker: CheckFn = direct_check,
        decision_log: DecisionLog | None = None,
        *,
        freshness: Freshness | None = None,
        policy_freshness: Freshness | None = None,
        rejections: RejectionLog | None = None,
        max_data_age: float | None = None,
    ) -> None:
        self.state = state
        self.freshness = freshness if freshness is not None else Freshness()
        self.policy_freshness = policy_freshness if policy_freshness is not None else Freshness()
        self.rejections = rejections if rejections is not None else RejectionLog()
        self.max_data_age = max_data_age
        self.decision_log = decision_log
        self.checker = checker
        self.codec = codec
        self.metrics = metrics
        self.max_wait = max_wait
        self._subjects: dict[str, SubjectRef] = {}
        self._resources: dict[str, ObjectRef] = {}
        self._check_bodies: dict[tuple[bool, int, str, int], bytes] = {}

    # helpers -----------------------------------------------------------------
    def _subject(self, text: str) -> SubjectRef:
        ref = self._subjects.get(text)
        if ref is None:
            ref = parse_subject(text)
            if len(self._subjects) >= PARSE_CACHE_SIZE:
                self._subjects.clear()
            self._subjects[text] = ref
        return ref

    def _resource(self, text: str) -> ObjectRef:
        ref = self._resources.get(text)
        if ref is None:
            ref = parse_object(text)
            if len(self._resources) >= PARSE_CACHE_SIZE:
                self._resources.clear()
            self._resources[text] = ref
        return ref

    def _run(self, context: grpc.ServicerContext, fn: Callable[[], T], decisions: bool) -> T:
        try:
            return fn()
        except Exception as e:
            if decisions and self.metrics is not None:
                self.metrics.decision("error")
            self._abort(context, e)

    @staticmethod
    def _abort(context: grpc.ServicerContext, e: BaseException) -> NoReturn:
        code, msg, reason = _status_for(e)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
        status = status_pb2.Status(code=code.value[0], message=msg, details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    def _view(self, context: grpc.ServicerContext, at_least: int) -> View:
        """The current view, after waiting (bounded) for data at `at_least` when it is > 0."""
        if at_least > 0 and self.state.store.current.revision < at_least:
            remaining = context.time_remaining()
            limit = self.max_wait
            by_deadline = False
            if remaining is not None and remaining - 0.02 < limit:
                limit = max(0.0, remaining - 0.02)  # answer before the client gives up
                by_deadline = True
            t0 = time.monotonic()
            if self.state.wait_for_revision(at_least, limit) is None:
                have = self.state.store.current.revision
                waited = time.monotonic() - t0
                msg = f"data revision {at_least} not reached after {waited:.2f}s (at {have})"
                if by_deadline:
                    raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, msg, "REVISION_NOT_REACHED")
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, msg, "REVISION_NOT_REACHED")
        return self.state.view()

    def _count(self, allowed: bool) -> None:
        if self.metrics is not None:
            self.metrics.decision("allow" if allowed else "deny")

    def _decide(
        self, view: View, subject_text: str, permission: str, resource_text: str, method: str
    ) -> Decision:
        subject = self._subject(subject_text)
        resource = self._resource(resource_text)
        d = self.checker(view, subject, permission, resource)
        if self.decision_log is not None:
            p = view.policy
            self.decision_log.record(
                method,
                str(subject),
                permission,
                str(resource),
                d.allowed,
                d.reason,
                d.revision,
                p.revision,
                p.name,
            )
        return d

    def _check_one(self, view: View, req: pb.CheckRequest, method: str) -> pb.CheckResponse:
        d = self._decide(view, req.subject, req.permission, req.resource, method)
        return pb.CheckResponse(
            allowed=d.allowed,
            revision=d.revision,
            reason=d.reason,
            policy_revision=view.policy.revision,
        )

    # the fast path -------------------------------------------------------------
    def fast_methods(self) -> list[FastMethod]:
        """Check, CheckBatch and Ping for `FastPath`: a call that asks for a data revision not
        yet reached may wait for it, so it runs on the thread pool."""
        service = f"/{pb.DESCRIPTOR.services_by_name['DecisionService'].full_name}"

        def check_blocks(r: pb.CheckRequest) -> bool:
            at_least = r.at_least_revision  # almost always 0: no revision to compare with
            return at_least > 0 and at_least > self.state.store.current.revision

        def batch_blocks(r: pb.CheckBatchRequest) -> bool:
            at_least = r.at_least_revision
            for c in r.checks:
                at_least = max(at_least, c.at_least_revision)
            return at_least > self.state.store.current.revision

        return [
            FastMethod(
                f"{service}/Check",
                self._check_serialized,
                pb.CheckRequest.FromString,
                _as_is,
                check_blocks,
                # Fixed at construction: with a decision log or cache, no wire path at all.
                self._check_wire
                if self.decision_log is None and self.checker is direct_check
                else None,
            ),
            FastMethod(
                f"{service}/CheckBatch",
                self.CheckBatch,
                pb.CheckBatchRequest.FromString,
                pb.CheckBatchResponse.SerializeToString,
                batch_blocks,
            ),
            FastMethod(
                f"{service}/Ping",
                self.Ping,
                pb.PingRequest.FromString,
                pb.PingResponse.SerializeToString,
                wire=_empty_ping,
            ),
        ]

    # RPCs --------------------------------------------------------------------
    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        d, policy_revision = self._check(request, context)
        return pb.CheckResponse(
            allowed=d.allowed,
            revision=d.revision,
            reason=d.reason,
            policy_revision=policy_revision,
        )

    def _check_serialized(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> bytes:
        """Check for the fast path: the response serialized. Its fields take few distinct
        values (allowed, a reason tag, the two revisions), so the bytes come from a table
        rather than a message being built and serialized for every call."""
        d, policy_revision = self._check(request, context)
        key = (d.allowed, d.revision, d.reason, policy_revision)
        body = self._check_bodies.get(key)
        if body is None:
            body = pb.CheckResponse(
                allowed=d.allowed,
                revision=d.revision,
                reason=d.reason,
                policy_revision=policy_revision,
            ).SerializeToString()
            if len(self._check_bodies) >= RESPONSE_CACHE_SIZE:
                self._check_bodies.clear()
            self._check_bodies[key] = body
        return body

    def _check_wire(self, payload: bytes) -> bytes | None:
        """Check for the fast path, from the request's bytes to the response's in one call
        into the engine, when nothing but the check itself is to be done: no revision to wait
        for, texts this servicer has parsed before (`fast_methods` offers it only without a
        decision log or cache). None: decode the request and take `_check_serialized` (the
        same answer, by the longer way)."""
        state = self.state
        policy = state.policy
        if policy is None or not state.data_ready:
            return None
        return policy.evaluator.check_wire(
            payload,
            state.store.current,
            self._subjects,
            self._resources,
            policy.revision,
            self.metrics.decided.cells() if self.metrics is not None else None,
        )

    def _check(
        self, request: pb.CheckRequest, context: grpc.ServicerContext
    ) -> tuple[Decision, int]:
        """Check's decision and the policy revision it was made under."""
        # The hot path: no closures, no per-call label lookups; without a decision log or
        # cache, `_decide` inlined (parsed refs from the tables, one call into the engine).
        try:
            at_least = request.at_least_revision
            state = self.state
            policy = state.policy
            if at_least > 0 or policy is None or not state.data_ready:
                view = self._view(context, at_least) if at_least > 0 else state.view()
                policy, snap = view.policy, view.snapshot
            else:  # what `state.view()` returns, without building the View
                snap = state.store.current
            if self.decision_log is None and self.checker is direct_check:
                s, r = request.subject, request.resource
                d = policy.evaluator.check(
                    snap,
                    self._subjects.get(s) or self._subject(s),
                    request.permission,
                    self._resources.get(r) or self._resource(r),
                )
            else:
                d = self._decide(
                    View(policy, snap),
                    request.subject,
                    request.permission,
                    request.resource,
                    "Check",
                )
        except Exception as e:
            if self.metrics is not None:
                self.metrics.error.inc()
            self._abort(context, e)
        if self.metrics is not None:
            self.metrics.decided.cells()[ALLOW if d.allowed else DENY] += 1
        return d, policy.revision

    def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        try:
            if request.subjects or request.resources or request.permissions:
                resp = self._batch_columns(request, context)
            else:
                resp = self._batch_checks(request, context)
        except Exception as e:
            if self.metrics is not None:
                self.metrics.error.inc()
            self._abort(context, e)
        return resp

    @staticmethod
    def _batch_limit(n: int) -> None:
        if n > MAX_BATCH:
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {n} checks exceeds the limit of {MAX_BATCH}",
                "BATCH_TOO_LARGE",
            )

    def _count_batch(self, n: int, allowed: int) -> None:
        if self.metrics is not None:
            if allowed:
                self.metrics.allow.inc(allowed)
            if n - allowed:
                self.metrics.deny.inc(n - allowed)

    def _batch_checks(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        """The nested form: one CheckRequest and one CheckResponse per check."""
        checks = request.checks
        n = len(checks)
        self._batch_limit(n)
        at_least = max([request.at_least_revision, *(c.at_least_revision for c in checks)])
        view = self._view(context, at_least)
        results = [self._check_one(view, c, "CheckBatch") for c in checks]
        self._count_batch(n, sum(1 for r in results if r.allowed))
        return pb.CheckBatchResponse(
            results=results,
            revision=view.snapshot.revision,
            policy_revision=view.policy.revision,
        )

    def _batch_columns(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        """The columnar form: parallel subject/permission/resource columns in, packed bools out."""
        if request.checks:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a batch uses either `checks` or the columns (subjects, permissions, resources),"
                " not both",
                "INVALID_BATCH",
            )
        subjects, resources, permissions = request.subjects, request.resources, request.permissions
        n, npm = len(subjects), len(permissions)
        if len(resources) != n or npm not in ((1, n) if n else (0, 1)):
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"columns disagree: {n} subjects, {len(resources)} resources, {npm} permissions"
                " (permissions: one per check, or a single one for all)",
                "INVALID_BATCH",
            )
        self._batch_limit(n)
        view = self._view(context, request.at_least_revision)
        perms = repeat(permissions[0], n) if npm == 1 else permissions
        cols = zip(subjects, perms, resources, strict=True)
        if self.decision_log is None and self.checker is direct_check:
            # The common case: the same as `_decide` without logging, the engine's per-call
            # setup done once for the batch (`check_many`: same answers, in order).
            sub, res = self._subject, self._resource
            subs, ress = self._subjects.get, self._resources.get  # hits skip a call each
            decisions = view.policy.evaluator.check_many(
                view.snapshot, [(subs(s) or sub(s), p, ress(r) or res(r)) for s, p, r in cols]
            )
        else:
            decide = self._decide
            decisions = [decide(view, s, p, r, "CheckBatch") for s, p, r in cols]
        allowed = [d.allowed for d in decisions]
        self._count_batch(n, sum(allowed))
        resp = pb.CheckBatchResponse(
            allowed=allowed, revision=view.snapshot.revision, policy_revision=view.policy.revision
        )
        if request.with_reasons:
            resp.reasons.extend([d.reason for d in decisions])
        return resp

    def ListAllowed(
        self, request: pb.ListAllowedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAllowedResponse]:
        def prepare() -> tuple[View, list[str], str, str | None, int]:
            if request.page_size < 0:
                raise Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_size must not be negative",
                    "INVALID_PAGE_SIZE",
                )
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            subject = self._subject(request.subject)
            # The cursor is bound to the query, so it cannot be replayed against another one.
            query = f"la|{subject}|{request.permission}|{request.resource_type}"
            after = self.codec.decode(query, request.cursor) if request.cursor else None
            view = self._view(context, request.at_least_revision)
            # Names (`type:id`), which the response carries: no cutting and re-prefixing.
            names = view.policy.evaluator.list_allowed_names(
                view.snapshot, subject, request.permission, request.resource_type
            )
            return view, names, query, after, size

        view, names, query, after, size = self._run(context, prepare, decisions=False)
        prefix = f"{request.resource_type}:"
        cut = len(prefix)
        rev = view.snapshot.revision
        n = len(names)
        # Keyset paging over the sorted names (one prefix, so sorted as their ids): page k+1
        # starts right after page k's last id, which the cursor holds.
        start = 0 if after is None else bisect_right(names, prefix + after)
        while True:
            end = start + size
            chunk = names[start:end]
            cursor = self.codec.encode(query, chunk[-1][cut:]) if end < n and chunk else ""
            yield pb.ListAllowedResponse(ids=chunk, revision=rev, next_cursor=cursor)
            if not cursor:
                return
            start = end

    def ListSubjects(
        self, request: pb.ListSubjectsRequest, context: grpc.ServicerContext
    ) -> pb.ListSubjectsResponse:
        def go() -> pb.ListSubjectsResponse:
            resource = parse_object(request.resource)
            view = self._view(context, request.at_least_revision)
            subjects = view.policy.evaluator.list_subjects(
                view.snapshot, resource, request.permission, request.subject_type
            )
            return pb.ListSubjectsResponse(subjects=subjects, revision=view.snapshot.revision)

        return self._run(context, go, decisions=False)

    def Explain(
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        def go() -> pb.ExplainResponse:
            subject = parse_subject(request.subject)
            resource = parse_object(request.resource)
            view = self._view(context, request.at_least_revision)
            ex = view.policy.evaluator.explain(view.snapshot, subject, request.permission, resource)
            self._count(ex.decision.allowed)
            return pb.ExplainResponse(
                allowed=ex.decision.allowed,
                revision=ex.decision.revision,
                reason=ex.decision.reason,
                proof=proof_to_pb(ex.proof),
                policy_revision=view.policy.revision,
            )

        return self._run(context, go, decisions=True)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        policy = self.state.policy
        data_age = self.freshness.age()
        policy_age = self.policy_freshness.age()
        resp = pb.StatusResponse(
            policy_name=policy.name if policy is not None else "",
            policy_revision=policy.revision if policy is not None else 0,
            data_revision=self.state.store.current.revision,
            ready=self.state.ready,
            data_age_seconds=-1.0 if data_age is None else data_age,
            policy_age_seconds=-1.0 if policy_age is None else policy_age,
            rejections_total=sum(self.rejections.counts().values()),
            data_fresh=self.freshness.is_fresh(self.max_data_age),
        )
        last = self.rejections.last
        if last is not None:
            when = timestamp_pb2.Timestamp()
            when.FromNanoseconds(int(last.time * 1e9))
            resp.last_rejection.CopyFrom(
                pb.BundleRejection(
                    category=last.category, reason=last.detail, time=when, revision=last.revision
                )
            )
        return resp

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        return pb.PingResponse()
