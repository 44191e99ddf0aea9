"""The decision server's side of the feed: follow a sync worker into a `DecisionState`.

Reconnects with jittered exponential backoff; a snapshot is applied only once its last chunk
has arrived (all or nothing); each delta is applied atomically at the SoR revision it carries,
so `at_least_revision` works with revisions returned by admin writes. The data is persisted
to `data_dir` (temp file, fsync, rename, with a checksum) and a restart resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from gatehouse.engine.state import DecisionState
from gatehouse.files import atomic_write
from gatehouse.graph import persist
from gatehouse.graph.persist import SnapshotFileError
from gatehouse.graph.store import Snapshot
from gatehouse.graph.tuples import Delta
from gatehouse.sync.feed import MAX_MESSAGE
from gatehouse.v1 import feed_pb2, feed_pb2_grpc

log = logging.getLogger("gatehouse.feed")

DATA_FILE = "data.snapshot"
JOURNAL_FILE = "data.journal"


@dataclass
class FollowerStats:
    snapshots: int = 0
    deltas: int = 0
    rejected: int = 0
    reconnects: int = 0


def write_snapshot(path: str, snap: Snapshot, policy_digest: str) -> None:
    """Persist `snap` as a binary snapshot file, tagged with the policy it was valid under."""
    atomic_write(path, lambda f: persist.dump(snap, f, {"policy_digest": policy_digest}))


def snapshot_revision(path: str) -> int | None:
    """The revision a snapshot file holds (header only, unchecked); None if unreadable."""
    try:
        with open(path, "rb") as f:
            return int(persist.header(f.read(1 << 20))["revision"])
    except (OSError, SnapshotFileError, KeyError, TypeError, ValueError):
        return None


class Journal:
    """The deltas applied since the last persisted snapshot, appended (and fsynced) *before*
    each is applied: after a crash, snapshot + journal give back exactly the last applied
    revision, so a restarted server never answers from older data than it already did.
    Each line carries a CRC; replay stops at the first torn or corrupt line."""

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()
        self._lines: list[tuple[int, str]] = []

    @staticmethod
    def _line(revision: int, writes: Iterable[str], deletes: Iterable[str]) -> str:
        body = json.dumps(
            {"r": revision, "w": list(writes), "d": list(deletes)}, separators=(",", ":")
        )
        return f"{zlib.crc32(body.encode()):08x} {body}\n"

    def append(self, revision: int, writes: Iterable[str], deletes: Iterable[str]) -> None:
        line = self._line(revision, writes, deletes)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            self._lines.append((revision, line))

    def truncate_through(self, revision: int) -> None:
        """Drop the entries a snapshot at `revision` now covers (atomic rewrite)."""
        with self._lock:
            keep = [(r, line) for r, line in self._lines if r > revision]
            tmp = f"{self.path}.tmp.{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(line for _r, line in keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._lines = keep

    def load(self) -> list[tuple[int, list[str], list[str]]]:
        """The valid entries on disk (a torn tail is cut off the file too)."""
        entries = self.read(self.path)
        with self._lock:
            self._lines = [(r, self._line(r, w, d)) for r, w, d in entries]
        self.truncate_through(-1)
        return entries

    @staticmethod
    def read(path: str) -> list[tuple[int, list[str], list[str]]]:
        out: list[tuple[int, list[str], list[str]]] = []
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError):
            return out
        for line in lines:
            crc, _, body = line.rstrip("\n").partition(" ")
            if not line.endswith("\n") or f"{zlib.crc32(body.encode()):08x}" != crc:
                break  # a torn tail: everything before it is good
            try:
                e = json.loads(body)
                out.append((int(e["r"]), list(e["w"]), list(e["d"])))
            except (ValueError, KeyError, TypeError):
                break
        return out


class FeedFollower:
    """Follow `target` (HOST:PORT of a sync worker) into `state` on a background thread."""

    def __init__(
        self,
        state: DecisionState,
        target: str,
        *,
        data_dir: str | None = None,
        on_current: Callable[[], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        persist_every: float = 2.0,
    ) -> None:
        self.state = state
        self.target = target
        self.data_dir = data_dir
        self.on_current = on_current or (lambda: None)
        self.on_reject = on_reject or (lambda _reason: None)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.persist_every = persist_every
        self.stats = FollowerStats()
        self._stop = threading.Event()
        self._call: Any = None
        self._threads: list[threading.Thread] = []
        self._persisted = -1
        self._persist_lock = threading.Lock()
        self.journal = Journal(os.path.join(data_dir, JOURNAL_FILE)) if data_dir else None

    @property
    def path(self) -> str | None:
        return os.path.join(self.data_dir, DATA_FILE) if self.data_dir else None

    def restore(self) -> int | None:
        """Load the persisted snapshot, if a valid one exists; returns its revision."""
        path = self.path
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        snap = None
        if data is not None:
            try:
                snap = self.state.load_packed(data)
            except SnapshotFileError as e:
                log.error("ignoring data snapshot %s: %s", path, e)
        if snap is None:
            if self.journal is not None:
                self.journal.truncate_through(2**62)  # deltas without their base are useless
            return None
        revision = snap.revision
        self._persisted = revision
        replayed = 0
        if self.journal is not None:
            for rev, writes, deletes in self.journal.load():
                if rev <= self.revision():
                    continue
                try:
                    self.state.apply_delta(Delta.of(writes, deletes), rev)
                except Exception as e:
                    log.error("journal replay stopped at revision %d: %s", rev, e)
                    break
                replayed += 1
        log.info(
            "restored %d tuples at revision %d from %s and %d journaled deltas",
            snap.count,
            revision,
            path,
            replayed,
        )
        return self.revision()

    def start(self) -> None:
        if self.data_dir:
            os.makedirs(self.data_dir, exist_ok=True)
            self.restore()
            t = threading.Thread(target=self._persist_loop, name="feed-persist", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._run, name="feed-follow", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for t in self._threads:
            t.join(timeout=5)
        self.persist()

    # ------------------------------------------------------------------------
    def revision(self) -> int:
        return self.state.store.current.revision if self.state.data_ready else 0

    def persist(self) -> None:
        if self.path is None or not self.state.data_ready:
            return
        policy = self.state.policy
        if policy is None or not policy.digest:
            return  # a file nobody could trust on restore is not worth writing
        with self._persist_lock:  # the feed thread persists a new base; so does the timer
            snap = self.state.store.current  # immutable: safe to read while deltas apply
            if snap.revision == self._persisted:
                return
            write_snapshot(self.path, snap, policy.digest)
            self._persisted = snap.revision
            if self.journal is not None:
                self.journal.truncate_through(snap.revision)

    def _persist_loop(self) -> None:
        wait = self.persist_every
        while not self._stop.wait(wait):
            t0 = time.monotonic()
            try:
                self.persist()
            except OSError as e:
                log.error("cannot persist the data snapshot: %s", e)
            # Writing a big graph holds the GIL for a while: spend at most ~10% of the time
            # persisting, however often the data changes.
            wait = max(self.persist_every, 10 * (time.monotonic() - t0))

    def _run(self) -> None:
        backoff = self.backoff_min
        while not self._stop.is_set():
            try:
                opts = [("grpc.max_receive_message_length", MAX_MESSAGE)]
                with grpc.insecure_channel(self.target, options=opts) as channel:
                    stub = feed_pb2_grpc.FeedServiceStub(channel)  # type: ignore[no-untyped-call]
                    call = stub.Watch(feed_pb2.WatchRequest(from_revision=self.revision()))
                    self._call = call
                    self._chunks, self._chunk_rev = [], -1  # a broken stream's part is void
                    for msg in call:
                        self._handle(msg)
                        backoff = self.backoff_min
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                log.warning("feed %s: %s", self.target, err)
            except _Rejected as e:
                self.stats.rejected += 1
                self.on_reject(str(e))
                log.error("feed: %s; not applying it (retrying)", e)
            self.stats.reconnects += 1
            # Full jitter: many sidecars restarted together do not reconnect in lockstep.
            self._stop.wait(random.uniform(0, backoff))
            backoff = min(backoff * 2, self.backoff_max)

    _chunks: list[str]
    _chunk_rev = -1

    def _handle(self, msg: feed_pb2.WatchResponse) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "snapshot":
            c = msg.snapshot
            if c.revision != self._chunk_rev:
                self._chunks, self._chunk_rev = [], c.revision
            self._chunks.extend(c.tuples)
            if c.last:
                tuples, self._chunks, self._chunk_rev = self._chunks, [], -1
                try:
                    self.state.load_data(tuples, c.revision)
                except Exception as e:
                    raise _Rejected(f"snapshot at revision {c.revision}: {e}") from e
                # The journal only makes sense on top of a persisted base: write it now.
                self.persist()
                self.stats.snapshots += 1
                self.on_current()
        elif kind == "delta":
            d = msg.delta
            if d.revision <= self.revision():
                return  # already applied (a resumed stream may repeat one)
            try:
                delta = Delta.of(d.writes, d.deletes)
                if self.journal is not None:
                    self.journal.append(d.revision, d.writes, d.deletes)  # write-ahead
                self.state.apply_delta(delta, d.revision)
            except Exception as e:
                raise _Rejected(f"delta at revision {d.revision}: {e}") from e
            self.stats.deltas += 1
            self.on_current()
        elif (
            kind == "heartbeat"
            and self.state.data_ready
            and msg.heartbeat.revision <= self.revision()
        ):
            self.on_current()


class _Rejected(Exception):
    pass
