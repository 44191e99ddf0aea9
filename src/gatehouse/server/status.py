"""Server-side bookkeeping that is not decision state: data freshness and bundle rejections.

`Freshness` records when a source last confirmed that what is loaded is current: static
tuples touch it once at load, a feed client on every delta or heartbeat, the bundle poller on
every successful poll (a new bundle or `304 Not Modified`). `RejectionLog` counts rejected
bundles by a short fixed category and keeps the last one for the Status RPC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Fixed categories for `gatehouse_bundle_rejections_total{reason=...}` (never free text).
REJECTION_REASONS: tuple[str, ...] = (
    "download",  # the fetch failed: HTTP error, connection error, oversize response
    "archive",  # not a valid or a hostile .tar.gz
    "signature",  # signature missing, malformed, untrusted key, does not verify
    "digest",  # signed, but the files differ from the signed list or their hashes
    "schema",  # manifest or schema invalid
    "assertions",  # the bundle's own assertions fail
    "rollback",  # older revision than the active policy
)


class Freshness:
    """When a data (or policy) source last confirmed its contents current. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None

    def touch(self) -> None:
        """The source has just confirmed that what is loaded is current."""
        self._last = self._clock()

    def age(self) -> float | None:
        """Seconds since the last `touch()`; None if never touched."""
        last = self._last
        return None if last is None else max(0.0, self._clock() - last)

    def is_fresh(self, max_age: float | None) -> bool:
        """True when there is no limit, or the source was touched within `max_age` seconds."""
        if max_age is None:
            return True
        age = self.age()
        return age is not None and age <= max_age


@dataclass(frozen=True, slots=True)
class Rejection:
    category: str  # one of REJECTION_REASONS
    detail: str  # the full reason
    time: float  # seconds since the epoch
    revision: int = 0  # the rejected bundle's manifest revision; 0 when unknown


class RejectionLog:
    """Counts of rejected bundles by category, and the last rejection. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REJECTION_REASONS, 0)
        self._last: Rejection | None = None

    def record(self, category: str, detail: str, revision: int = 0) -> Rejection:
        if category not in self._counts:
            raise ValueError(f"unknown rejection category {category!r}")
        r = Rejection(category, detail, time.time(), revision)
        with self._lock:
            self._counts[category] += 1
            self._last = r
        return r

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def last(self) -> Rejection | None:
        return self._last
