"""Graph store: id grammar, atomic deltas, monotonic revisions, compaction keeps contents."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from gatehouse.graph import (
    Delta,
    DeltaError,
    GraphStore,
    InvalidReference,
    parse_object,
    parse_subject,
    parse_tuple,
)


@pytest.mark.parametrize(
    "text",
    [
        "user:ana@acme",
        "environment:acme/TEST",
        "field:field_a/incidents/location",
        "user:a.b-c_d|e+f",
        "ns/type:x",
    ],
)
def test_valid_objects(text: str) -> None:
    assert str(parse_object(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "user", "user:", ":x", "User:x", "user:a b", "user:a#b", "user:ä", "user:a\x00", "user:*"],
)
def test_invalid_objects_rejected(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_object(text)


def test_subjects_and_tuples() -> None:
    assert parse_subject("group:g#member").relation == "member"
    assert parse_subject("user:*").wildcard
    with pytest.raises(InvalidReference):
        parse_subject("user:*#member")
    t = parse_tuple("fund:f1#viewer@group:finance#member")
    assert str(t) == "fund:f1#viewer@group:finance#member"
    with pytest.raises(InvalidReference):
        parse_tuple("fund:f1#viewer")


def test_delta_is_atomic_and_revisions_move_forward() -> None:
    st = GraphStore()
    st.load(["doc:a#viewer@user:u1"], revision=5)
    with pytest.raises(DeltaError):
        st.apply(Delta.of(["doc:a#viewer@user:u2"]), revision=5)
    assert st.current.revision == 5
    snap = st.apply(Delta.of(["doc:a#viewer@user:u2"], ["doc:a#viewer@user:u1"]))
    assert snap.revision == 6
    assert snap.has_tuple(parse_tuple("doc:a#viewer@user:u2"))
    assert not snap.has_tuple(parse_tuple("doc:a#viewer@user:u1"))
    assert snap.count == 1
    # Deletes run before writes: a tuple in both ends up present.
    both = "doc:a#viewer@user:u3"
    snap = st.apply(Delta.of([both], [both]))
    assert snap.has_tuple(parse_tuple(both)) and snap.count == 2
    # An empty delta advances the revision and changes nothing.
    snap = st.apply(Delta())
    assert snap.revision == 8 and snap.count == 2


def test_old_snapshot_is_unchanged_after_delta() -> None:
    st = GraphStore()
    old = st.load(["doc:a#viewer@user:u1"], revision=1)
    st.apply(Delta.of(deletes=["doc:a#viewer@user:u1"]))
    assert old.has_tuple(parse_tuple("doc:a#viewer@user:u1"))
    assert not st.current.has_tuple(parse_tuple("doc:a#viewer@user:u1"))


def test_compaction_preserves_contents() -> None:
    st = GraphStore(min_compaction=8)
    st.load([f"doc:d{i}#viewer@user:u{i}" for i in range(50)], revision=1)
    for i in range(0, 50, 2):
        st.apply(Delta.of([f"doc:d{i}#editor@user:u{i}"], [f"doc:d{i}#viewer@user:u{i}"]))
    expected = {f"doc:d{i}#viewer@user:u{i}" for i in range(1, 50, 2)} | {
        f"doc:d{i}#editor@user:u{i}" for i in range(0, 50, 2)
    }
    assert set(st.current.tuples()) == expected
    assert st.current.count == len(expected)


def test_wait_for_revision() -> None:
    st = GraphStore()
    st.load([], revision=1)
    assert st.wait_for(2, timeout=0.01) is None
    timer = threading.Timer(0.05, lambda: st.apply(Delta.of(["doc:a#viewer@user:u"])))
    timer.start()
    snap = st.wait_for(2, timeout=5)
    timer.join()
    assert snap is not None and snap.revision == 2


@pytest.mark.parametrize("packer", [True, False], ids=["c-packer", "python"])
def test_every_snapshot_keeps_its_own_view_of_a_shared_overlay(
    packer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatehouse.graph import store as store_mod

    if not packer:  # the pure-Python load and delta paths, as without a C compiler
        monkeypatch.setattr(store_mod, "_packer", None)
    # Deltas add versioned regions to an overlay shared by all snapshots of one base: an old
    # snapshot must keep answering what it held, through repeated changes to the same
    # objects and through a compaction that replaces the base.
    st = GraphStore(min_compaction=1 << 30)
    st.load(["doc:a#viewer@user:u0"], revision=1)
    expected = {1: {"doc:a#viewer@user:u0"}}
    snaps = {1: st.current}
    held = set(expected[1])
    for rev in range(2, 8):
        new = f"doc:a#viewer@user:u{rev}"
        gone = f"doc:a#viewer@user:u{rev - 2}"
        snaps[rev] = st.apply(Delta.of([new, "doc:b#viewer@user:u0"], [gone]), revision=rev)
        held = (held - {gone}) | {new, "doc:b#viewer@user:u0"}
        expected[rev] = set(held)
    st.min_compaction = 0
    st.apply(Delta.of(["doc:c#viewer@user:u9"]), revision=8)
    assert st.wait_compacted(10)
    after = st.apply(Delta.of(["doc:a#viewer@user:u8"]), revision=9)
    for rev, snap in snaps.items():
        assert set(snap.tuples()) == expected[rev], rev
        for t in expected[rev]:
            assert snap.has_tuple(parse_tuple(t))
    assert set(after.tuples()) == expected[7] | {"doc:c#viewer@user:u9", "doc:a#viewer@user:u8"}


@pytest.mark.parametrize("packer", [True, False], ids=["c-packer", "python"])
def test_a_delta_that_fails_half_written_stays_invisible(
    packer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatehouse.graph import store as store_mod

    st = GraphStore()
    st.load(["doc:a#viewer@user:u1", "doc:b#viewer@user:u1"], revision=1)
    before = st.current
    calls = 0

    def failing(real: Callable[..., object], at: int) -> Callable[..., object]:
        def put(*args: object) -> object:
            nonlocal calls
            calls += 1
            if calls == at:  # after some regions of the delta are already written
                raise MemoryError("simulated")
            return real(*args)

        return put

    with monkeypatch.context() as m:
        if packer:
            # the forward index's regions are written, then the reverse index's fail
            real = store_mod._packer
            assert real is not None
            m.setattr(
                store_mod,
                "_packer",
                SimpleNamespace(**{**vars(real), "append": failing(real.append, 2)}),
            )
        else:
            m.setattr(store_mod, "_packer", None)
            m.setattr(store_mod, "_put_head", failing(store_mod._put_head, 3))
        with pytest.raises(MemoryError):
            st.apply(Delta.of(["doc:a#viewer@user:u2", "doc:b#viewer@user:u2"]), revision=2)
    assert st.current is before
    assert set(before.tuples()) == {"doc:a#viewer@user:u1", "doc:b#viewer@user:u1"}
    # the next delta gets a newer version: the half-written regions never become visible
    snap = st.apply(Delta.of(["doc:c#viewer@user:u3"]), revision=2)
    assert set(snap.tuples()) == {
        "doc:a#viewer@user:u1",
        "doc:b#viewer@user:u1",
        "doc:c#viewer@user:u3",
    }


def test_link_is_all_or_nothing() -> None:
    """Linking a delta's regions fails as a whole: the forward links already made are
    undone when the reverse ones fail."""
    from gatehouse.graph import store as store_mod

    class Failing(store_mod.Overlay):
        def link(self, refs: list[tuple[int, int]]) -> list[int | None]:
            raise MemoryError("simulated")

    f_ov = store_mod.Overlay([(1, 10), (2, 20)])
    r_ov = Failing([(5, 50)])
    with pytest.raises(MemoryError):
        store_mod._link(f_ov, [(2, 21), (3, 31), (2, 22)], r_ov, [(5, 51), (6, 61)])
    assert f_ov.as_dict() == {1: 10, 2: 20}
    assert r_ov.as_dict() == {5: 50}


@pytest.mark.parametrize("in_c", [True, False])
def test_overlay_link_fails_whole_on_a_bad_pair(
    in_c: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad pair partway (here a ref that is not a pair, after repeated oids) raises and
    leaves the overlay as it was, in C and in Python."""
    from gatehouse.graph import store as store_mod

    if not in_c:
        monkeypatch.setattr(store_mod, "_packer", None)
    elif store_mod._packer is None:
        pytest.skip("no C packer")
    monkeypatch.setattr(store_mod, "_LINK_STEP", 3)  # C: the bad pair is in a later call
    ov = store_mod.Overlay([(1, 10), (257, 20)])  # 1 and 257 share a dict
    before = ov.as_dict()
    good = [(257, 21), (3, 31), (257, 22), (1, 11)]
    with pytest.raises((TypeError, ValueError)):
        ov.link([*good, (4,)])  # type: ignore[list-item]
    assert ov.as_dict() == before
    assert ov.link(good) == [20, None, 21, 10]
    assert ov.as_dict() == {1: 11, 257: 22, 3: 31}


def test_background_compaction_gives_way_to_a_delta_but_is_not_starved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compaction step holds the writers' turn: between two steps it hands the turn to a
    delta being applied and sleeps; after waiting `_GIVE_WAY` for deltas back to back, it
    takes the turn before the next delta does."""
    import time

    from gatehouse.graph import store as store_mod

    st = GraphStore()
    with st._turn:  # no delta: the next step goes on at once, holding the turn
        t0 = time.monotonic()
        st._give_way()
        assert time.monotonic() - t0 < store_mod._GIVE_WAY
        assert st._turn.locked()
    monkeypatch.setattr(store_mod, "_GIVE_WAY", 0.1)
    order: list[str] = []
    stepping = threading.Event()
    end_first = threading.Event()

    def compaction() -> None:
        with st._turn:
            stepping.set()
            while st._idle.is_set():  # the first delta is waiting for the turn
                time.sleep(0.001)
            st._give_way()  # it takes the turn here
            order.append("step")
            time.sleep(0.05)  # a step: the second delta waits for it

    def delta(name: str, end: threading.Event | None) -> None:
        with st._writing():
            order.append(name)
            if end is not None:
                assert end.wait(10)

    c = threading.Thread(target=compaction)
    c.start()
    assert stepping.wait(10)
    d1 = threading.Thread(target=delta, args=("delta 1", end_first))
    d1.start()
    deadline = time.monotonic() + 10
    while not st._starved:  # the step has waited the whole bound
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert order == ["delta 1"]
    d2 = threading.Thread(target=delta, args=("delta 2", None))
    d2.start()
    time.sleep(0.05)
    assert order == ["delta 1"]  # the second delta waits for the starved step
    end_first.set()
    for th in (c, d1, d2):
        th.join(10)
    assert order == ["delta 1", "step", "delta 2"]
    assert not st._starved and st._handoff.is_set() and not st._turn.locked()
