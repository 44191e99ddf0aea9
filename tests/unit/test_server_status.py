"""Freshness and RejectionLog: the server-side bookkeeping behind health, metrics and Status."""

from __future__ import annotations

import pytest

from gatehouse.server import Freshness, RejectionLog
from gatehouse.server.status import REJECTION_REASONS


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_freshness_age_and_limit() -> None:
    clock = Clock()
    f = Freshness(clock)
    assert f.age() is None
    assert f.is_fresh(None)  # no limit: always fresh
    assert not f.is_fresh(10)  # a limit and never confirmed: stale
    f.touch()
    clock.now += 10
    assert f.age() == 10 and f.is_fresh(10) and not f.is_fresh(9.5)
    f.touch()
    assert f.age() == 0 and f.is_fresh(9.5)


def test_rejection_log_counts_by_fixed_category_and_keeps_the_last() -> None:
    log = RejectionLog()
    assert log.last is None and set(log.counts()) == set(REJECTION_REASONS)
    log.record("signature", "bundle is not signed", 2)
    last = log.record("assertions", "1 of 9 assertions fail", 3)
    assert log.last == last and (last.category, last.revision) == ("assertions", 3)
    assert log.counts()["signature"] == 1 and log.counts()["assertions"] == 1
    assert sum(log.counts().values()) == 2
    with pytest.raises(ValueError, match="unknown rejection category"):
        log.record("bundle is not signed", "free text is not a label value")
