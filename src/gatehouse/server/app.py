"""Build and run the gRPC server: decision service, health, reflection and metrics."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gatehouse.engine.cursor import CursorCodec
from gatehouse.engine.state import DecisionState
from gatehouse.observability.decision_log import DecisionLog
from gatehouse.server.cache import make_checker
from gatehouse.server.fastpath import FastPath
from gatehouse.server.metrics import InstrumentedServer, Metrics
from gatehouse.server.servicer import DEFAULT_MAX_WAIT, DecisionServicer
from gatehouse.server.status import Freshness, RejectionLog
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name


@dataclass
class ServerHandle:
    """A running server. `port` is the bound TCP port (0 when listening on a unix socket only)."""

    server: grpc.Server
    port: int
    metrics_port: int | None
    metrics: Metrics
    health: health.HealthServicer
    decision_log: DecisionLog | None = None
    # Data sources call `freshness.touch()` whenever they confirm the data current.
    freshness: Freshness = field(default_factory=Freshness)
    policy_freshness: Freshness = field(default_factory=Freshness)
    rejections: RejectionLog = field(default_factory=RejectionLog)
    # Serves Check, CheckBatch and Ping on a thread of its own (None: the plain grpcio path).
    fast: FastPath | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 2.0) -> None:
        """Report NOT_SERVING, drain in-flight RPCs for up to `grace` seconds, then stop."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.server.stop(grace).wait()
        if self.fast is not None:
            self.fast.join(5.0)
        if self.decision_log is not None:
            self.decision_log.close()
        self.metrics.stop_http()

    def wait(self) -> None:
        self.server.wait_for_termination()


_frozen = threading.Lock()  # held for good once this process has frozen its heap


def freeze_heap_once() -> bool:
    """Collect, then move every object the collector tracks into its permanent generation
    (`gc.freeze()`), once per process; return whether this call did it.

    After the first load the heap is dominated by the graph's few large containers; a full
    collection then walks all of them (~20-30 ms at 10^6 tuples) and stalls every RPC in
    flight. Frozen objects are skipped by collections (reference counting still frees
    them), so those stalls disappear. Objects created later, including snapshots built from
    deltas, are collected as usual.
    """
    if not _frozen.acquire(blocking=False):
        return False
    gc.collect()
    gc.freeze()
    return True


def map_large_allocations(threshold: int = 1 << 21, keep: int = 1 << 28) -> bool:
    """Ask glibc's malloc to serve every allocation of `threshold` bytes or more with its own
    mapping (`mallopt(M_MMAP_THRESHOLD)`), and to keep up to `keep` bytes of freed heap
    memory instead of returning it (`M_TRIM_THRESHOLD`); return whether both took effect.

    The graph's packed arrays grow by `realloc`. By default glibc raises its mmap threshold
    as large blocks are freed (up to 32 MiB), so arrays of a few MiB end up on the heap, and
    growing one copies it whole in one C call with the GIL held: milliseconds in which no RPC
    runs. A mapped block grows by `mremap`, which moves pages instead of bytes. Smaller blocks
    (overlay chunks, and the overlay's dict tables of up to 1.3 MB, rebuilt at every
    compaction) then reuse heap pages already mapped: a fresh page costs ~2 us to fault in
    here, with the GIL held. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _watch_ready(
    state: DecisionState,
    hs: health.HealthServicer,
    stop: threading.Event,
    freshness: Freshness,
    max_data_age: float | None,
    gc_freeze: bool = False,
) -> None:
    last: bool | None = None
    while not stop.is_set():
        ready = state.ready and freshness.is_fresh(max_data_age)
        if ready and gc_freeze:
            freeze_heap_once()  # before SERVING is reported: the first load is in
            gc_freeze = False
        if ready != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            hs.set("", status)
            hs.set(SERVICE_NAME, status)
            last = ready
        stop.wait(0.05)


def serve(
    state: DecisionState,
    *,
    listen: str | None = "127.0.0.1:0",
    unix: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    reflection_enabled: bool = True,
    cursor_key: bytes | None = None,
    max_workers: int = 16,
    max_wait: float = DEFAULT_MAX_WAIT,
    decision_cache_size: int = 0,
    decision_log: str | None = None,
    decision_log_mask: Sequence[str] = (),
    freshness: Freshness | None = None,
    policy_freshness: Freshness | None = None,
    rejections: RejectionLog | None = None,
    max_data_age: float | None = None,
    so_reuseport: bool = False,
    gc_freeze: bool = True,
    fast_path: bool = True,
) -> ServerHandle:
    """Start serving `state`; return at once with a handle (call `.stop()` to end).

    `cursor_key` signs pagination cursors; without one a random per-process key is used,
    so cursors do not survive a restart. `decision_cache_size` > 0 wraps Check in an LRU
    decision cache of that many entries (0 = off). `max_workers` is the RPC thread count.

    `freshness` is touched by the data source whenever it confirms the data current (static
    tuples: once at load; a feed client: every delta and heartbeat); with `max_data_age`
    (seconds) health reports NOT_SERVING while the data is older than that, or was never
    confirmed. `policy_freshness` is touched by the bundle source; `rejections` records
    rejected bundles. All three are created when not given and are on the handle.
    `so_reuseport` lets several processes share the `listen` port (`serve --workers N`).
    `gc_freeze`: when the state first becomes ready, `freeze_heap_once()` (once per process),
    so full garbage collections stop walking the loaded graph; and, at once,
    `map_large_allocations()`, so growing a large array never copies it (both are tunings of
    a process that exists to serve; False leaves the interpreter and allocator alone).
    `fast_path`: serve Check, CheckBatch and Ping on one thread of their own
    (`gatehouse.server.fastpath`), the other methods on the `max_workers` pool; False (or a
    grpcio without the needed internals) serves everything on the pool.
    """
    if listen is None and unix is None:
        raise ValueError("nothing to listen on: give listen and/or unix")
    if max_data_age is not None and max_data_age <= 0:
        raise ValueError("max_data_age must be > 0 seconds")
    if gc_freeze:
        map_large_allocations()
    freshness = freshness if freshness is not None else Freshness()
    policy_freshness = policy_freshness if policy_freshness is not None else Freshness()
    rejections = rejections if rejections is not None else RejectionLog()
    metrics = Metrics(state, freshness, policy_freshness, rejections)
    options = [("grpc.so_reuseport", 1)] if so_reuseport else []
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gatehouse-rpc")
    server = grpc.server(pool, options=options)
    codec = CursorCodec(cursor_key if cursor_key is not None else os.urandom(32))
    checker = make_checker(decision_cache_size, metrics.cache_hits.inc, metrics.cache_misses.inc)
    dlog = (
        DecisionLog(decision_log, decision_log_mask, on_drop=metrics.log_dropped.inc)
        if decision_log
        else None
    )
    servicer = DecisionServicer(
        state,
        codec,
        metrics,
        max_wait,
        checker,
        dlog,
        freshness=freshness,
        policy_freshness=policy_freshness,
        rejections=rejections,
        max_data_age=max_data_age,
    )
    fast = (
        FastPath(server, servicer.fast_methods(), pool, metrics)
        if fast_path and FastPath.supported(server)
        else None
    )
    # Services register through this: their handlers are instrumented once, here, not on
    # every call as an interceptor would. The fast path's methods are left to it.
    registrar = InstrumentedServer(server, metrics, fast.names if fast else frozenset())
    pb_grpc.add_DecisionServiceServicer_to_server(servicer, registrar)  # type: ignore[no-untyped-call]
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, registrar)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            registrar,  # type: ignore[arg-type]
        )
    port = 0
    if listen is not None:
        port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
    if unix is not None:
        target = unix if unix.startswith("unix:") else f"unix:{unix}"
        if server.add_insecure_port(target) == 0:
            raise OSError(f"cannot listen on {target}")
    mport = metrics.start_http(metrics_port, metrics_host) if metrics_port is not None else None
    handle = ServerHandle(
        server, port, mport, metrics, hs, dlog, freshness, policy_freshness, rejections, fast
    )
    # NOT_SERVING until the state is ready; then SERVING.
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    threading.Thread(
        target=_watch_ready,
        args=(state, hs, handle._stop, freshness, max_data_age, gc_freeze),
        name="gatehouse-health",
        daemon=True,
    ).start()
    if fast is not None:
        fast.register()
        fast.start()  # starts `server`, its completion queue polled by the fast path's thread
    else:
        server.start()
    return handle
