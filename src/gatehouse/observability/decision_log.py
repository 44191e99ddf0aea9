"""A JSON-lines decision log written by a background thread from a bounded queue.

Recording never blocks a request: when the queue is full the oldest entry is dropped and
counted. Only the listed fields are written; request metadata is never logged.
"""

from __future__ import annotations

import datetime
import json
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any

FIELDS = (
    "decision_id",
    "timestamp",
    "method",
    "subject",
    "permission",
    "resource",
    "allowed",
    "reason",
    "data_revision",
    "policy_revision",
    "policy_name",
)
MASK = "***"


class DecisionLog:
    """Thread-safe. `sink` is a file path, "-" for stdout, or an open text stream."""

    def __init__(
        self,
        sink: str | IO[str],
        mask: Iterable[str] = (),
        queue_size: int = 10_000,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.mask = frozenset(m for m in (x.strip() for x in mask) if m)
        unknown = sorted(self.mask - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown decision log field(s) to mask: {', '.join(unknown)}")
        self._own = False
        if isinstance(sink, str):
            if sink == "-":
                self._out: IO[str] = sys.stdout
            else:
                self._out = open(sink, "a", encoding="utf-8")  # noqa: SIM115
                self._own = True
        else:
            self._out = sink
        self._q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max(1, queue_size))
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self.dropped = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def record(
        self,
        method: str,
        subject: str,
        permission: str,
        resource: str,
        allowed: bool,
        reason: str,
        data_revision: int,
        policy_revision: int,
        policy_name: str,
    ) -> None:
        if self._closed.is_set():
            return
        entry: dict[str, Any] = {
            "decision_id": str(uuid.uuid4()),
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "method": method,
            "subject": subject,
            "permission": permission,
            "resource": resource,
            "allowed": allowed,
            "reason": reason,
            "data_revision": data_revision,
            "policy_revision": policy_revision,
            "policy_name": policy_name,
        }
        for f in self.mask:
            entry[f] = MASK
        with self._lock:
            while True:
                try:
                    self._q.put_nowait(entry)
                    return
                except queue.Full:
                    try:
                        self._q.get_nowait()  # drop the oldest
                    except queue.Empty:
                        continue
                    self.dropped += 1
                    if self._on_drop is not None:
                        self._on_drop()

    def _run(self) -> None:
        while True:
            try:
                entry = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            self._out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            if self._q.empty():
                self._out.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting entries, write what is queued, flush and close the sink."""
        self._closed.set()
        self._thread.join(timeout)
        self._out.flush()
        if self._own:
            self._out.close()
