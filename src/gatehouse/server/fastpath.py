"""The hot unary RPCs (Check, CheckBatch, Ping) answered on one thread, without grpcio's
per-call thread hand-offs.

grpcio's synchronous server hands every call across threads several times: its completion
queue thread accepts the call and submits it to the pool; a worker asks for the request
message and sleeps on a condition until the queue thread wakes it with the message; the worker
runs the handler and starts the response. On one core that is ~10 context switches and ~250
µs of CPU per empty RPC here, far more than a check costs.

`FastPath` replaces grpcio's completion-queue thread with a loop of its own on the same queue.
Calls of the fast methods (registered with the core server under their own tags) are driven
on that thread: accept, receive, run the handler inline, send message and status in one batch.
A call that may block (one that waits for a data revision) runs on the server's thread pool
instead, so the loop never sleeps on anything but its queue. Every other event goes to
grpcio's own handling (`grpc._server._process_event_and_continue`, what its thread would have
done), so ListAllowed, Explain, Status, health and reflection are served exactly as before, on
the pool. One thread polls the server's queue: with gRPC's EventEngine listener and endpoints
turned off (`GRPC_EXPERIMENTS`, set by `gatehouse serve`, see docs/operations.md) that thread
also does the socket I/O and an RPC costs no context switch at all.

It uses grpcio internals (`grpc._server`, `grpc._cython.cygrpc`) of the pinned grpcio
version; `FastPath.supported` checks for them and `serve` falls back to the plain server when
they are missing. What a client sees is what the plain server does: the same status codes
and details, rich error details in the trailing metadata, deadlines through
`time_remaining()`, and the same per-method metrics.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

import grpc

from gatehouse.server.metrics import BOUNDS, CALL_BUCKET0, CALL_OK, CALL_SECONDS, Metrics, Tally

cygrpc: Any
gserver: Any
try:  # grpcio internals, untyped; `FastPath.supported` checks what is used
    cygrpc = importlib.import_module("grpc._cython.cygrpc")
    gserver = importlib.import_module("grpc._server")
except ImportError:  # pragma: no cover - grpcio always ships them
    cygrpc = gserver = None

# What `FastPath` uses of grpc._server (the same steps as its `_start` and `_serve`).
_GSERVER_NEEDS = (
    "_ServerStage",
    "_request_call",
    "_request_registered_call",
    "_process_event_and_continue",
    "_begin_shutdown_once",
    "_DEALLOCATED_SERVER_CHECK_PERIOD_S",
)

_LOG = logging.getLogger(__name__)

_FLAGS = 0
_REQUEST, _RECEIVED, _SENT = range(3)
_OK_CODE = grpc.StatusCode.OK
_OK = _OK_CODE.value[0]
perf_counter = time.perf_counter
if cygrpc is not None:  # what every answered call builds, bound once
    _SendInitialMetadata = cygrpc.SendInitialMetadataOperation
    _SendMessage = cygrpc.SendMessageOperation
    _SendStatus = cygrpc.SendStatusFromServerOperation
    _ReceiveClose = cygrpc.ReceiveCloseOnServerOperation


@dataclass(frozen=True)
class FastMethod:
    """One unary-unary method to serve on the fast path.

    `name` is "/package.Service/Method"; `handler(request, context)` is the servicer method;
    `may_block(request)` says whether the call may wait (it then runs on the thread pool).
    `wire(payload)`, if given, is tried first: the response's bytes straight from the
    request's, or None to take the usual way (decode, `may_block`, handler); it must not
    block, and an exception in it is logged and the usual way taken."""

    name: str
    handler: Callable[[Any, grpc.ServicerContext], Any]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]
    may_block: Callable[[Any], bool] = lambda _request: False
    wire: Callable[[bytes], bytes | None] | None = None


class _Abort(Exception):
    """Raised by `_Context.abort`: the handler ended the call with a status."""


class _Context:
    """The part of `grpc.ServicerContext` the fast handlers use, with the plain server's
    semantics: `abort`/`abort_with_status` raise after recording the status."""

    __slots__ = ("_event", "code_", "details_", "trailing_")

    def __init__(self, event: Any) -> None:
        self._event = event
        self.code_: grpc.StatusCode | None = None
        self.details_: str | None = None
        self.trailing_: Any = None

    def time_remaining(self) -> float:
        deadline: float = self._event.call_details.deadline
        return max(deadline - time.time(), 0.0)

    def invocation_metadata(self) -> Any:
        return self._event.invocation_metadata

    def is_active(self) -> bool:
        return True

    def cancel(self) -> None:
        self._event.call.cancel()

    def code(self) -> grpc.StatusCode | None:
        return self.code_

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing_ = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        if code == grpc.StatusCode.OK:  # as grpcio: aborting with OK fails the call
            code, details = grpc.StatusCode.UNKNOWN, ""
        self.code_ = code
        self.details_ = details
        raise _Abort()

    def abort_with_status(self, status: grpc.Status) -> None:
        self.trailing_ = status.trailing_metadata
        self.abort(status.code, status.details)


class _Method:
    """A FastMethod with the Tally its calls are counted and timed in."""

    __slots__ = ("cells", "handled", "label", "request_tag", "spec", "tally")

    def __init__(self, spec: FastMethod, metrics: Metrics | None) -> None:
        self.spec = spec
        self.label = spec.name.lstrip("/")
        self.request_tag = (_REQUEST, self)  # the same for every call: built once
        self.handled: Any = None
        self.tally: Tally | None = None
        self.cells: list[float] | None = None  # the loop thread's cells of `tally`
        if metrics is not None:
            self.handled = metrics.handled
            self.tally = metrics.calls(self.label)


def _status_ops(code: grpc.StatusCode, details: str, trailing: Any) -> tuple[Any, ...]:
    return (
        cygrpc.SendInitialMetadataOperation(None, _FLAGS),
        cygrpc.SendStatusFromServerOperation(
            tuple(trailing) if trailing else None,
            code.value[0],
            details.encode("utf-8"),
            _FLAGS,
        ),
    )


class FastPath:
    """Serves `methods` of `server` on the thread that polls the server's completion queue
    (see the module docstring).

    Call `register()` before starting and `start()` instead of `server.start()`; the thread
    ends when the server has shut down (`join` waits for that)."""

    def __init__(
        self,
        server: grpc.Server,
        methods: Sequence[FastMethod],
        pool: Executor,
        metrics: Metrics | None = None,
    ) -> None:
        self._server = server
        self._state: Any = server._state  # type: ignore[attr-defined]
        self._cy: Any = server._cy_server  # type: ignore[attr-defined]
        self._cq: Any = self._state.completion_queue
        self._methods = [_Method(m, metrics) for m in methods]
        self._pool = pool
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(m.spec.name for m in self._methods)

    @staticmethod
    def supported(server: grpc.Server) -> bool:
        cy = getattr(server, "_cy_server", None)
        state = getattr(server, "_state", None)
        return (
            cygrpc is not None
            and gserver is not None
            and all(hasattr(gserver, a) for a in _GSERVER_NEEDS)
            and cy is not None
            and all(hasattr(cy, a) for a in ("register_method", "request_registered_call"))
            and state is not None
            and all(
                hasattr(state, a)
                for a in ("completion_queue", "lock", "stage", "registered_method_handlers")
            )
            and all(
                hasattr(cygrpc, a)
                for a in (
                    "SendInitialMetadataOperation",
                    "SendMessageOperation",
                    "SendStatusFromServerOperation",
                    "ReceiveMessageOperation",
                    "ReceiveCloseOnServerOperation",
                    "CompletionType",
                )
            )
        )

    def register(self) -> None:
        """Before the server starts: our methods with the core server."""
        for m in self._methods:
            self._cy.register_method(m.spec.name)

    def start(self) -> None:
        """Start the server (grpcio's `_start`, less its thread) and run our loop instead."""
        state = self._state
        with state.lock:
            if state.stage is not gserver._ServerStage.STOPPED:
                raise ValueError("Cannot start already-started server!")
            state.server.start()
            state.stage = gserver._ServerStage.STARTED
            for method in state.registered_method_handlers:
                gserver._request_registered_call(state, method)
            gserver._request_call(state)
            for m in self._methods:
                self._request(m)
        self._thread = threading.Thread(target=self._loop, name="gatehouse-fast", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # the loop ----------------------------------------------------------------------------
    def _request(self, m: _Method) -> None:
        try:
            self._cy.request_registered_call(self._cq, self._cq, m.spec.name, m.request_tag)
        except ValueError:  # raised once the server is shutting down (cheaper than suppress)
            return

    def _loop(self) -> None:
        state = self._state
        lock = state.lock
        started = gserver._ServerStage.STARTED
        poll = self._cq.poll
        timeout = cygrpc.CompletionType.queue_timeout
        period = gserver._DEALLOCATED_SERVER_CHECK_PERIOD_S
        process = gserver._process_event_and_continue
        receive = cygrpc.ReceiveMessageOperation
        clock = time.time
        request = self._request
        received = self._received
        for m in self._methods:
            if m.tally is not None:
                m.cells = m.tally.cells()  # this thread's, written here without a lock
        while True:
            ev = poll(clock() + period)
            if state.server_deallocated:
                gserver._begin_shutdown_once(state)
            if ev.completion_type == timeout:
                continue
            tag = ev.tag
            if type(tag) is tuple:  # ours; grpcio's tags are objects, strings and callables
                try:
                    what = tag[0]
                    if what == _RECEIVED:
                        m = tag[1]
                        received(m, tag[2], ev, m.cells)
                    elif what == _REQUEST and ev.success:  # else shutting down: no more calls
                        m = tag[1]
                        with lock:
                            if state.stage is started:
                                request(m)
                        ev.call.start_server_batch((receive(_FLAGS),), (_RECEIVED, m, ev))
                    # _SENT: nothing to do (the tag kept the call referenced until then)
                except Exception:  # pragma: no cover - a bug here must not stop the loop
                    _LOG.exception("fast path: event handling failed")
            elif not process(state, ev):
                return  # grpcio's server has stopped
            ev = tag = None  # as grpcio: drop the event (and its call) before polling again

    def _received(self, m: _Method, rev: Any, ev: Any, cells: list[float] | None) -> None:
        """`rev` is the call's RequestCallEvent, `ev` the completion of its receive;
        `cells` this thread's Tally cells for `m` (None: look them up)."""
        payload = ev.batch_operations[0].message() if ev.success else None
        call = rev.call
        if payload is None:
            self._finish(
                call,
                _status_ops(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f'"{m.spec.name}" requires exactly one request message.',
                    None,
                ),
            )
            return
        spec = m.spec
        if spec.wire is not None:
            t0 = perf_counter()
            try:
                body = spec.wire(payload)
            except Exception:
                _LOG.exception("fast path: %s failed on the wire path", spec.name)
                body = None
            if body is not None:
                self._ok(m, t0, cells)
                self._send(call, body)
                return
        try:
            request = spec.request_deserializer(payload)
        except Exception:
            _LOG.exception("fast path: cannot deserialize a %s request", spec.name)
            self._finish(
                call,
                _status_ops(grpc.StatusCode.INTERNAL, "Exception deserializing request!", None),
            )
            return
        try:
            blocks = spec.may_block(request)
        except Exception:
            blocks = True  # let the handler (on the pool) report it
        if blocks:
            try:
                self._pool.submit(self._handle, m, rev, request, None)
            except RuntimeError:  # the pool is shut down: the process is going away
                self._finish(
                    call, _status_ops(grpc.StatusCode.UNAVAILABLE, "server shutting down", None)
                )
        else:
            self._handle(m, rev, request, cells)

    def _handle(self, m: _Method, rev: Any, request: Any, cells: list[float] | None) -> None:
        ctx = _Context(rev)
        call = rev.call
        t0 = perf_counter()
        try:
            response = m.spec.handler(request, cast(grpc.ServicerContext, ctx))
        except _Abort:
            self._count(m, t0, ctx.code_ or grpc.StatusCode.UNKNOWN, cells)
            self._finish(
                call,
                _status_ops(
                    ctx.code_ or grpc.StatusCode.UNKNOWN, ctx.details_ or "", ctx.trailing_
                ),
            )
            return
        except Exception as e:
            _LOG.exception("fast path: %s failed", m.spec.name)
            self._count(m, t0, grpc.StatusCode.UNKNOWN, cells)
            self._finish(
                call,
                _status_ops(
                    grpc.StatusCode.UNKNOWN, f"Exception calling application: {e}", ctx.trailing_
                ),
            )
            return
        try:
            body = m.spec.response_serializer(response)
        except Exception:
            _LOG.exception("fast path: cannot serialize a %s response", m.spec.name)
            self._count(m, t0, grpc.StatusCode.INTERNAL, cells)
            self._finish(
                call, _status_ops(grpc.StatusCode.INTERNAL, "Failed to serialize response!", None)
            )
            return
        code = ctx.code_
        if code is None or code is _OK_CODE:
            self._ok(m, t0, cells)
            if ctx.details_ is None and ctx.trailing_ is None:
                self._send(call, body)
                return
            code = _OK_CODE
        else:
            self._count(m, t0, code, cells)
        self._finish(
            call,
            (
                cygrpc.SendInitialMetadataOperation(None, _FLAGS),
                cygrpc.SendMessageOperation(body, _FLAGS),
                cygrpc.SendStatusFromServerOperation(
                    tuple(ctx.trailing_) if ctx.trailing_ else None,
                    code.value[0],
                    (ctx.details_ or "").encode("utf-8"),
                    _FLAGS,
                ),
            ),
        )

    @staticmethod
    def _ok(m: _Method, t0: float, cells: list[float] | None) -> None:
        if m.tally is not None:
            dt = perf_counter() - t0
            if cells is None:
                cells = m.tally.cells()
            cells[CALL_OK] += 1
            cells[CALL_BUCKET0 + bisect_left(BOUNDS, dt)] += 1
            cells[CALL_SECONDS] += dt

    @staticmethod
    def _send(call: Any, body: bytes) -> None:
        """An OK response with `body`, and the client's close, in one batch (operations are
        per batch: they hold their C buffers until it completes)."""
        call.start_server_batch(
            (
                _SendInitialMetadata(None, _FLAGS),
                _SendMessage(body, _FLAGS),
                _SendStatus(None, _OK, b"", _FLAGS),
                _ReceiveClose(_FLAGS),
            ),
            (_SENT, call),
        )

    @staticmethod
    def _count(m: _Method, t0: float, code: grpc.StatusCode, cells: list[float] | None) -> None:
        if m.tally is not None:
            dt = perf_counter() - t0
            if cells is None:
                cells = m.tally.cells()
            cells[CALL_BUCKET0 + bisect_left(BOUNDS, dt)] += 1
            cells[CALL_SECONDS] += dt
            m.handled.labels(m.label, code.name).inc()

    @staticmethod
    def _finish(call: Any, ops: tuple[Any, ...]) -> None:
        """The call's last batch: the response and status, and the client's close (a unary
        client has half-closed with its request; waiting for it here rather than in a batch
        of its own saves a completion per call, and nothing here needs it earlier)."""
        call.start_server_batch((*ops, cygrpc.ReceiveCloseOnServerOperation(_FLAGS)), (_SENT, call))
