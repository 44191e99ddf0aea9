"""The decision cache never changes an answer (RELIABILITY T03, T04)."""

from __future__ import annotations

import random

import pytest

from gatehouse.engine.evaluator import Decision, InvalidQuery
from gatehouse.engine.state import DecisionState, View
from gatehouse.graph.tuples import Delta, ObjectRef, SubjectRef, parse_object, parse_subject
from gatehouse.model.compiler import compile_schema
from gatehouse.server.cache import CheckFn, DecisionCache, direct_check, make_checker

SCHEMA = """
definition user {}
definition group {
    relation member: user | group#member
}
definition doc {
    relation owner: user
    relation viewer: user | group#member
    permission view = viewer + owner
    permission edit = owner
}
"""

USERS = [f"user:u{i}" for i in range(6)]
GROUPS = [f"group:g{i}" for i in range(3)]
DOCS = [f"doc:d{i}" for i in range(5)]


def _random_tuple(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.choice(GROUPS)}#member@{rng.choice(USERS)}"
    if kind == 1:
        return f"{rng.choice(DOCS)}#viewer@{rng.choice(GROUPS)}#member"
    if kind == 2:
        return f"{rng.choice(DOCS)}#owner@{rng.choice(USERS)}"
    return f"{rng.choice(DOCS)}#viewer@{rng.choice(USERS)}"


def _replay(seed: int, size: int) -> list[tuple[bool, int, str]]:
    rng = random.Random(seed)
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "p", 1)
    state.load_data({_random_tuple(rng) for _ in range(12)}, 1)
    check: CheckFn = make_checker(size)
    out: list[tuple[bool, int, str]] = []
    for step in range(1500):
        if step % 50 == 49:
            writes = {_random_tuple(rng) for _ in range(3)}
            deletes = {_random_tuple(rng) for _ in range(3)} - writes
            state.apply_delta(Delta.of(writes, deletes))
        view = state.view()
        subj = parse_subject(rng.choice(USERS + [f"{g}#member" for g in GROUPS]))
        d = check(view, subj, rng.choice(["view", "edit"]), parse_object(rng.choice(DOCS)))
        out.append((d.allowed, d.revision, d.reason))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cache_on_off_identity(seed: int) -> None:
    off = _replay(seed, 0)
    assert _replay(seed, 10_000) == off
    assert _replay(seed, 8) == off


def _view_state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "p", 1)
    state.load_data(["doc:d1#owner@user:a", "doc:d1#viewer@user:a|b"], 1)
    return state


class _Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, view: View, s: SubjectRef, p: str, r: ObjectRef) -> Decision:
        self.calls += 1
        return direct_check(view, s, p, r)


PAIRS = [
    (("user:a|b", "view", "doc:d1"), ("user:a", "view", "doc:d1")),
    (("user:a", "view", "doc:d1"), ("user:a", "edit", "doc:d1")),
    (("user:a", "edit", "doc:d1"), ("user:a|b", "edit", "doc:d1")),
    (("group:a#member", "view", "doc:d1"), ("group:a", "view", "doc:d1")),
]


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a[0]}/{a[1]}~{b[0]}/{b[1]}" for a, b in PAIRS])
def test_adversarial_pairs_never_share_an_entry(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    state = _view_state()
    inner = _Recorder()
    cache = DecisionCache(inner, 100)
    view = state.view()

    def ask(q: tuple[str, str, str]) -> Decision:
        return cache(view, parse_subject(q[0]), q[1], parse_object(q[2]))

    ask(a)
    got = ask(b)
    assert inner.calls == 2
    assert got == direct_check(view, parse_subject(b[0]), b[1], parse_object(b[2]))
    ka = cache.key(view, parse_subject(a[0]), a[1], parse_object(a[2]))
    kb = cache.key(view, parse_subject(b[0]), b[1], parse_object(b[2]))
    assert ka != kb


def test_same_query_at_two_revisions_and_reloads() -> None:
    state = _view_state()
    inner = _Recorder()
    cache = DecisionCache(inner, 100)
    s, r = parse_subject("user:a"), parse_object("doc:d1")
    assert cache(state.view(), s, "edit", r).allowed
    assert cache(state.view(), s, "edit", r).allowed
    assert (cache.hits, cache.misses) == (1, 1)
    state.apply_delta(Delta.of(deletes=["doc:d1#owner@user:a"]))
    assert not cache(state.view(), s, "edit", r).allowed
    # A reload at the same revision is a new snapshot: it must not reuse the old entry.
    state.load_data(["doc:d1#owner@user:a"], state.view().snapshot.revision)
    assert cache(state.view(), s, "edit", r).allowed
    assert inner.calls == 3


def test_errors_are_not_cached() -> None:
    state = _view_state()
    cache = DecisionCache(direct_check, 10)
    for _ in range(2):
        with pytest.raises(InvalidQuery):
            cache(state.view(), parse_subject("user:a"), "nope", parse_object("doc:d1"))
    assert cache.hits == 0


def test_size_zero_is_off() -> None:
    assert make_checker(0) is direct_check
    with pytest.raises(ValueError):
        DecisionCache(direct_check, 0)
