"""A bounded LRU decision cache that decorates the check call; the evaluator knows nothing of it.

Keys are tuples, never concatenated strings (RELIABILITY T04): the policy and snapshot are
identified by a per-object token as well as their revisions, so a reload at the same revision
or a re-activated policy can never reuse an old entry.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from gatehouse.engine.evaluator import Decision
from gatehouse.engine.state import View
from gatehouse.graph.tuples import ObjectRef, SubjectRef

CheckFn = Callable[[View, SubjectRef, str, ObjectRef], Decision]


def direct_check(view: View, subject: SubjectRef, permission: str, resource: ObjectRef) -> Decision:
    """The undecorated check: ask the view's evaluator."""
    return view.policy.evaluator.check(view.snapshot, subject, permission, resource)


class _Tokens:
    """A unique, never-reused token per live object (holds the last few objects strongly)."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._seen: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._next = itertools.count(1)

    def token(self, obj: Any) -> int:
        hit = self._seen.get(id(obj))
        if hit is not None and hit[0] is obj:
            self._seen.move_to_end(id(obj))
            return hit[1]
        tok = next(self._next)
        self._seen[id(obj)] = (obj, tok)
        while len(self._seen) > self._keep:
            self._seen.popitem(last=False)
        return tok


class DecisionCache:
    """Wraps a `CheckFn` with an LRU of `size` entries. Thread-safe; errors are never cached."""

    def __init__(
        self,
        inner: CheckFn,
        size: int,
        on_hit: Callable[[], None] | None = None,
        on_miss: Callable[[], None] | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("cache size must be positive (use the inner check for 0)")
        self.inner = inner
        self._cache: LRUCache[tuple[object, ...], Decision] = LRUCache(maxsize=size)
        self._lock = threading.Lock()
        self._tokens = _Tokens()
        self._on_hit = on_hit
        self._on_miss = on_miss
        self.hits = 0
        self.misses = 0

    def key(
        self, view: View, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> tuple[object, ...]:
        p, s = view.policy, view.snapshot
        with self._lock:
            ptok = self._tokens.token(p)
            stok = self._tokens.token(s)
        return (
            (ptok, p.name, p.revision, p.digest),
            (stok, s.revision),
            (subject.type, subject.id, subject.relation),
            permission,
            (resource.type, resource.id),
        )

    def __call__(
        self, view: View, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> Decision:
        k = self.key(view, subject, permission, resource)
        with self._lock:
            d = self._cache.get(k)
            if d is not None:
                self.hits += 1
        if d is not None:
            if self._on_hit is not None:
                self._on_hit()
            return d
        d = self.inner(view, subject, permission, resource)
        with self._lock:
            self.misses += 1
            self._cache[k] = d
        if self._on_miss is not None:
            self._on_miss()
        return d


def make_checker(
    size: int,
    on_hit: Callable[[], None] | None = None,
    on_miss: Callable[[], None] | None = None,
) -> CheckFn:
    """The check function to serve with: cached when `size` > 0, direct otherwise."""
    if size <= 0:
        return direct_check
    return DecisionCache(direct_check, size, on_hit, on_miss)
