"""Graph store: id grammar, atomic deltas, monotonic revisions, compaction keeps contents."""

from __future__ import annotations

import threading

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
