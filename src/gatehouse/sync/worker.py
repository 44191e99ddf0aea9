"""The sync worker: system-of-record rows -> tuples -> a feed of deltas for decision servers.

One thread owns the projection (how many rows produce each tuple). It reads an initial
snapshot of the mapped tables, then tails the change log: on PostgreSQL it is woken by
LISTEN/NOTIFY, with polling as the fallback; on SQLite it polls. Every SoR transaction
becomes one `FeedDelta` with the SoR's revision (empty when it changed no tuple), kept in a
bounded ring that `Watch` streams read from. A periodic reconciliation re-reads everything,
repairs drift (writes the change log did not capture) and counts it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from gatehouse.model.compiler import CompiledSchema
from gatehouse.sor.store import SystemOfRecord, Transaction
from gatehouse.sync.mapping import MappingError, TupleMapping

log = logging.getLogger("gatehouse.sync")


@dataclass(frozen=True, slots=True)
class FeedDelta:
    revision: int
    writes: tuple[str, ...]
    deletes: tuple[str, ...]


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.sor_revision = Gauge(
            "gatehouse_sync_sor_revision", "Newest revision committed in the SoR", registry=r
        )
        self.revision = Gauge(
            "gatehouse_sync_revision", "Newest revision the worker has mapped", registry=r
        )
        self.lag = Gauge(
            "gatehouse_sync_lag_seconds",
            "Seconds since the worker last had every committed SoR change mapped",
            registry=r,
        )
        self.deltas = Counter(
            "gatehouse_sync_deltas_sent", "Deltas sent to decision servers", registry=r
        )
        self.snapshots = Counter(
            "gatehouse_sync_snapshots_sent", "Snapshots sent to decision servers", registry=r
        )
        self.repairs = Counter(
            "gatehouse_sync_reconcile_repairs",
            "Tuples repaired by reconciliation (drift the change log missed)",
            registry=r,
        )
        self.reconciles = Counter(
            "gatehouse_sync_reconciliations", "Completed reconciliations", registry=r
        )
        self.rejected = Counter(
            "gatehouse_sync_rejected_rows",
            "Row changes that mapped to no valid tuple (skipped, logged)",
            registry=r,
        )
        self.watchers = Gauge("gatehouse_sync_connected_sidecars", "Open Watch streams", registry=r)
        self.errors = Counter(
            "gatehouse_sync_sor_errors", "Failed reads of the system of record", registry=r
        )


class Projection:
    """Tuple -> number of rows producing it. A tuple is present while its count is > 0, so
    two rows mapping to one tuple cannot delete it for each other."""

    def __init__(self, mapping: TupleMapping, schema: CompiledSchema | None = None) -> None:
        self.mapping = mapping.with_checker(schema.check_tuple if schema is not None else None)
        self.counts: dict[str, int] = {}
        self.rejected = 0

    def _tuples(self, table: str, row: dict[str, object] | None, count: bool) -> list[str]:
        try:
            return self.mapping.tuples(table, row)
        except MappingError as e:
            # Fail closed: a row we cannot map grants nothing (its old tuples still go).
            if count:
                self.rejected += 1
                log.error("skipping %s row %s: %s", table, row, e)
            return []

    def expected(
        self, rows: Iterable[tuple[str, list[dict[str, object]]]], count: bool = True
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, chunk in rows:
            for row in chunk:
                for t in self._tuples(table, row, count=count):
                    counts[t] = counts.get(t, 0) + 1
        return counts

    def read(self, sor: SystemOfRecord, count: bool = True) -> tuple[int, dict[str, int]]:
        """(revision, tuple counts) of every mapped row, read in one SoR transaction.
        `count`: count (and log) rows that cannot be mapped."""
        rev = 0
        chunks: list[tuple[str, list[dict[str, object]]]] = []
        for r, table, rows in sor.snapshot(self.mapping.tables):
            rev = r
            if rows:
                chunks.append((table, rows))
        return rev, self.expected(chunks, count)

    def apply(self, txn: Transaction) -> FeedDelta:
        before: dict[str, bool] = {}
        counts = self.counts
        for ch in txn.changes:
            if ch.op == "reconcile":
                continue
            for t in self._tuples(ch.table, ch.old, count=False):
                before.setdefault(t, counts.get(t, 0) > 0)
                n = counts.get(t, 0) - 1
                if n > 0:
                    counts[t] = n
                else:
                    counts.pop(t, None)
            for t in self._tuples(ch.table, ch.new, count=True):
                before.setdefault(t, counts.get(t, 0) > 0)
                counts[t] = counts.get(t, 0) + 1
        writes = tuple(t for t, was in before.items() if not was and counts.get(t, 0) > 0)
        deletes = tuple(t for t, was in before.items() if was and counts.get(t, 0) == 0)
        return FeedDelta(txn.revision, writes, deletes)


class SyncWorker:
    """Maps the SoR into a feed. `start()` runs the tail thread; `stop()` ends it."""

    def __init__(
        self,
        sor: SystemOfRecord,
        mapping: TupleMapping,
        *,
        schema: CompiledSchema | None = None,
        poll_interval: float = 0.5,
        reconcile_interval: float = 300.0,
        retain: int = 10_000,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.sor = sor
        self.projection = Projection(mapping, schema)
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.metrics = metrics or WorkerMetrics()
        self.cond = threading.Condition()
        self.revision = 0  # newest mapped revision; guarded by cond
        self.ring: deque[FeedDelta] = deque(maxlen=retain)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        # Repairs waiting for their marker transaction: (writes, deletes).
        self._pending: tuple[set[str], set[str]] | None = None
        self._proj_lock = threading.Lock()  # the projection's counts and _pending
        self._caught_up_at = time.monotonic()
        self._snapshot_cache: tuple[int, list[str]] | None = None

    # lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gatehouse-sync", daemon=True)
        self._thread.start()
        if self.sor.dialect == "postgresql":
            threading.Thread(target=self._listen, name="gatehouse-listen", daemon=True).start()
        if self.reconcile_interval > 0:
            threading.Thread(
                target=self._reconcile_loop, name="gatehouse-reconcile", daemon=True
            ).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # feed reads (Watch) -------------------------------------------------------
    def snapshot(self) -> tuple[int, list[str]]:
        """(revision, every tuple) of the projection, consistent with the ring. Watchers that
        ask at the same revision (a fleet reconnecting together) share one list."""
        # The projection lock: the counts are exactly those of `revision` (a transaction is
        # mapped and published under it, never one without the other).
        with self._proj_lock, self.cond:
            cached = self._snapshot_cache
            if cached is None or cached[0] != self.revision:
                cached = (self.revision, list(self.projection.counts))
                self._snapshot_cache = cached
            return cached

    def deltas_after(self, revision: int, timeout: float) -> list[FeedDelta] | None:
        """The retained deltas newer than `revision` (waiting up to `timeout` for one);
        None when the ring no longer holds revision + 1 (the caller needs a snapshot)."""
        with self.cond:
            self.cond.wait_for(lambda: self.revision > revision or self._stop.is_set(), timeout)
            if self.revision <= revision:
                return []
            if not self.ring or self.ring[0].revision > revision + 1:
                return None
            start = revision + 1 - self.ring[0].revision
            return [self.ring[i] for i in range(start, len(self.ring))]

    # the tail thread ----------------------------------------------------------
    def _publish(self, delta: FeedDelta) -> None:
        with self.cond:
            self.ring.append(delta)
            self.revision = delta.revision
            self.cond.notify_all()
        self.metrics.revision.set(delta.revision)

    def _initial(self) -> None:
        rev, counts = self.projection.read(self.sor)
        with self._proj_lock, self.cond:
            self.projection.counts = counts
            self._snapshot_cache = None
            self.revision = rev
            self.ring.clear()
            self.cond.notify_all()
        self.metrics.revision.set(rev)
        self.metrics.rejected.inc(self.projection.rejected)
        self.projection.rejected = 0
        log.info("initial snapshot: %d tuples at revision %d", len(counts), rev)

    def _apply(self, txn: Transaction) -> None:
        with self._proj_lock:
            delta = self.projection.apply(txn)
            if self.projection.rejected:
                self.metrics.rejected.inc(self.projection.rejected)
                self.projection.rejected = 0
            pending = self._pending
            if pending is not None:
                pw, pd = pending
                if any(c.op == "reconcile" for c in txn.changes):
                    # The marker transaction carries the repairs at a fresh revision.
                    self._pending = None
                    delta = FeedDelta(
                        delta.revision, delta.writes + tuple(pw), delta.deletes + tuple(pd)
                    )
                else:  # a newer change of the same tuple wins over the repair
                    for t in delta.writes + delta.deletes:
                        pw.discard(t)
                        pd.discard(t)
            self._publish(delta)

    def _tail(self, upto: int | None = None) -> int:
        """Map every committed transaction (up to `upto`); returns how many."""
        n = 0
        while not self._stop.is_set():
            cur = self.revision
            limit = 500 if upto is None else min(500, upto - cur)
            if limit <= 0:
                break
            txns = self.sor.changes_since(cur, limit)
            if not txns:
                break
            for txn in txns:
                self._apply(txn)
            n += len(txns)
        return n

    def reconcile(self) -> int:
        """Re-read everything, repair drift, return the number of repaired tuples.

        Runs beside the tail thread, which keeps mapping changes meanwhile (a full re-read of
        a big SoR takes seconds; freshness must not stall for it). The re-read is at
        revision S; tuples that deltas after S touched are left alone (those deltas are
        newer than the re-read); the rest must match it. Repairs ship as the delta of a
        marker transaction committed afterwards, so they get a fresh revision."""
        snap_rev, expected = self.projection.read(self.sor, count=False)
        tailing = self._thread is not None and self._thread.is_alive()
        if tailing:
            with self.cond:
                self.cond.wait_for(
                    lambda: self.revision >= snap_rev or self._stop.is_set(), timeout=60
                )
        else:
            self._tail(upto=snap_rev)
        with self._proj_lock:
            with self.cond:
                if self.revision < snap_rev:
                    return 0  # the tail is stuck (the SoR is away): try again next time
                later = [d for d in self.ring if d.revision > snap_rev]
                covered = self.revision == snap_rev or (
                    bool(self.ring) and self.ring[0].revision <= snap_rev + 1
                )
            if not covered:
                log.info("reconciliation skipped: the ring no longer holds revision %d", snap_rev)
                return 0
            touched = {t for d in later for t in d.writes + d.deletes}
            current = self.projection.counts
            writes = {t for t in expected if t not in current and t not in touched}
            deletes = {t for t in current if t not in expected and t not in touched}
            for t, n in expected.items():  # exact producer counts from now on
                if t not in touched and current.get(t) != n:
                    current[t] = n
            for t in deletes:
                del current[t]
            if writes or deletes:
                with self.cond:
                    self._snapshot_cache = None
                self._pending = (writes, deletes)
        self.metrics.reconciles.inc()
        if not (writes or deletes):
            return 0
        log.warning(
            "reconciliation at revision %d: %d missing and %d extra tuples repaired",
            snap_rev,
            len(writes),
            len(deletes),
        )
        self.metrics.repairs.inc(len(writes) + len(deletes))
        marker = self.sor.mark_reconcile(f"{len(writes)} writes, {len(deletes)} deletes")
        if tailing:
            self._wake.set()
        else:
            self._tail(upto=marker)
        return len(writes) + len(deletes)

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.reconcile_interval):
            if not self.ready.is_set():
                continue
            try:
                self.reconcile()
            except Exception as e:
                self.metrics.errors.inc()
                log.warning(
                    "reconciliation failed (%s); next try in %.0fs", e, self.reconcile_interval
                )

    def _run(self) -> None:
        backoff = self.poll_interval
        while not self._stop.is_set():
            try:
                if not self.ready.is_set():
                    self._initial()
                    self.ready.set()
                _floor, head = self.sor.bounds()
                self.metrics.sor_revision.set(head)
                self._tail()
                now = time.monotonic()
                if self.revision >= head:
                    self._caught_up_at = now
                self.metrics.lag.set(now - self._caught_up_at)
                backoff = self.poll_interval
                self._wake.wait(self.poll_interval)
                self._wake.clear()
            except Exception as e:  # the SoR is down: keep serving what we have, retry
                self.metrics.errors.inc()
                # Staleness keeps rising while we cannot read: that is what alerts watch.
                self.metrics.lag.set(time.monotonic() - self._caught_up_at)
                log.warning("system of record unavailable (%s); retrying in %.1fs", e, backoff)
                # Jittered, capped: a fleet of workers does not hammer a recovering database.
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 5.0)

    def _listen(self) -> None:
        """Wake the tail thread on NOTIFY; reconnect with backoff when PostgreSQL is away."""
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.sor.url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("LISTEN gatehouse_sor")
                    self._wake.set()  # catch up on anything committed while not listening
                    while not self._stop.is_set():
                        for _n in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except Exception as e:
                log.info("LISTEN connection lost (%s); polling until it is back", e)
                self._stop.wait(1.0)
