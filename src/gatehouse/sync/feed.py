"""The worker's gRPC feed: `FeedService.Watch` streams a snapshot, then one delta per SoR
transaction, with heartbeats while idle.

Backpressure: a stream is a generator that gRPC pulls from only as fast as HTTP/2 flow
control lets the client consume, and it reads from the worker's bounded ring; a watcher that
falls behind the ring gets a fresh snapshot instead of an ever-growing buffer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from gatehouse.sync.worker import SyncWorker
from gatehouse.v1 import feed_pb2, feed_pb2_grpc

log = logging.getLogger("gatehouse.sync")

CHUNK = 5000
# One SoR transaction is one Delta message, however many rows it changed (it must apply all
# or nothing), so both ends accept large messages. Snapshots are chunked.
MAX_MESSAGE = 1024 * 1024 * 1024
FEED_SERVICE = "gatehouse.v1.FeedService"


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, worker: SyncWorker, heartbeat: float = 1.0) -> None:
        self.worker = worker
        self.heartbeat = heartbeat

    def _snapshot(self) -> Iterator[feed_pb2.WatchResponse]:
        rev, tuples = self.worker.snapshot()
        self.worker.metrics.snapshots.inc()
        for i in range(0, max(len(tuples), 1), CHUNK):
            part = tuples[i : i + CHUNK]
            last = i + CHUNK >= len(tuples)
            yield feed_pb2.WatchResponse(
                snapshot=feed_pb2.SnapshotChunk(revision=rev, tuples=part, last=last)
            )

    def Watch(
        self, request: feed_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[feed_pb2.WatchResponse]:
        w = self.worker
        if request.from_revision < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "from_revision must be >= 0")
        if not w.ready.wait(timeout=30):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the worker has not read the SoR yet")
        if request.from_revision > w.revision:
            # The watcher is ahead of us: either we are catching up, or the SoR went back
            # in time. Never send it older data.
            w.deltas_after(request.from_revision - 1, timeout=10)
            if w.revision < request.from_revision:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"revision {request.from_revision} is newer than the SoR's {w.revision}",
                )
        w.metrics.watchers.inc()
        try:
            cursor = request.from_revision
            if cursor == 0 or w.deltas_after(cursor, timeout=0) is None:
                for msg in self._snapshot():
                    cursor = msg.snapshot.revision
                    yield msg
            while context.is_active() and not w.stopping:
                batch = w.deltas_after(cursor, timeout=self.heartbeat)
                if batch is None:  # fell behind the ring: start over from a snapshot
                    for msg in self._snapshot():
                        cursor = msg.snapshot.revision
                        yield msg
                    continue
                if not batch:
                    yield feed_pb2.WatchResponse(heartbeat=feed_pb2.Heartbeat(revision=cursor))
                    continue
                for d in batch:
                    yield feed_pb2.WatchResponse(
                        delta=feed_pb2.Delta(
                            revision=d.revision, writes=d.writes, deletes=d.deletes
                        )
                    )
                    w.metrics.deltas.inc()
                    cursor = d.revision
        finally:
            w.metrics.watchers.dec()


@dataclass
class FeedHandle:
    server: grpc.Server
    port: int
    metrics_port: int | None
    health: health.HealthServicer
    _http: object | None = None

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]


def serve_feed(
    worker: SyncWorker,
    listen: str = "127.0.0.1:50052",
    metrics_port: int | None = None,
    max_streams: int = 256,
    metrics_host: str = "127.0.0.1",
) -> FeedHandle:
    """Start the feed server (and metrics on 127.0.0.1:metrics_port, 0 = any free port)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_streams + 8, thread_name_prefix="feed"),
        maximum_concurrent_rpcs=max_streams,
        options=[("grpc.max_send_message_length", MAX_MESSAGE)],
    )
    feed_pb2_grpc.add_FeedServiceServicer_to_server(FeedServicer(worker), server)  # type: ignore[no-untyped-call]
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    def _ready() -> None:
        while not worker.ready.wait(0.5):
            if worker.stopping:
                return
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        hs.set(FEED_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    threading.Thread(target=_ready, daemon=True, name="feed-health").start()
    http = None
    mport = None
    if metrics_port is not None:
        http, _t = start_http_server(
            metrics_port, addr=metrics_host, registry=worker.metrics.registry
        )
        mport = int(http.server_port)
    return FeedHandle(server, port, mport, hs, http)
