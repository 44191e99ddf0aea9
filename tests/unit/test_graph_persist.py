"""Binary snapshot files: a loaded store answers exactly like the one that was dumped, and a
bad file is refused whole."""

from __future__ import annotations

import io
import random

import pytest

from gatehouse.engine.evaluator import Evaluator
from gatehouse.graph import persist
from gatehouse.graph.persist import SnapshotFileError
from gatehouse.graph.store import GraphStore
from gatehouse.graph.tuples import Delta, parse_object, parse_subject
from gatehouse.model.compiler import compile_schema

SCHEMA = compile_schema(
    """
definition user {}
definition group { relation member: user | user:* | group#member }
definition doc {
    relation parent: doc
    relation viewer: user | user:* | group#member
    relation editor: user | group#member
    permission edit = editor + parent->edit
    permission view = viewer + edit + parent->view
}
"""
)


def random_tuples(rng: random.Random, n: int) -> list[str]:
    out = set()
    while len(out) < n:
        k = rng.random()
        d, u, g = rng.randrange(60), rng.randrange(40), rng.randrange(12)
        if k < 0.3:
            out.add(f"doc:d{d}#viewer@user:u{u}")
        elif k < 0.45:
            out.add(f"doc:d{d}#editor@group:g{g}#member")
        elif k < 0.7:
            out.add(f"group:g{g}#member@user:u{u}")
        elif k < 0.8:
            out.add(f"group:g{g}#member@group:g{rng.randrange(12)}#member")
        elif k < 0.9:
            out.add(f"doc:d{d}#parent@doc:d{rng.randrange(60)}")
        elif k < 0.95:
            out.add(f"doc:d{d}#viewer@user:*")
        else:
            out.add(f"group:g{g}#member@user:*")
    return sorted(out)


def roundtrip(store: GraphStore) -> GraphStore:
    buf = io.BytesIO()
    persist.dump(store.current, buf, {"policy_digest": "abc"})
    fresh = GraphStore()
    snap, meta = persist.load(fresh, buf.getvalue())
    assert meta == {"policy_digest": "abc"}
    assert fresh.current is snap
    return fresh


@pytest.mark.parametrize("seed", range(5))
def test_a_loaded_store_answers_like_the_dumped_one(seed: int) -> None:
    rng = random.Random(seed)
    tuples = random_tuples(rng, 400)
    store = GraphStore(background_compaction=False)
    store.load(tuples[:300], 5)
    # An overlay too: deltas after the load that did not compact.
    store.apply(Delta.of(tuples[300:], tuples[:20]), 6)
    loaded = roundtrip(store)
    a, b = store.current, loaded.current
    assert b.revision == 6 and b.count == a.count
    assert sorted(a.tuples()) == sorted(b.tuples())
    ev = Evaluator(SCHEMA)
    for _ in range(400):
        s = parse_subject(rng.choice([f"user:u{rng.randrange(45)}", "group:g1#member"]))
        r = parse_object(f"doc:d{rng.randrange(65)}")
        for perm in ("view", "edit"):
            assert ev.check(a, s, perm, r).allowed == ev.check(b, s, perm, r).allowed
    for u in range(45):
        s = parse_subject(f"user:u{u}")
        assert ev.list_allowed(a, s, "view", "doc") == ev.list_allowed(b, s, "view", "doc")
    # The loaded store keeps working: new objects and deltas.
    loaded.apply(Delta.of(["doc:new#viewer@user:fresh"], []), 7)
    assert ev.check(loaded.current, parse_subject("user:fresh"), "view", parse_object("doc:new"))


def test_an_empty_graph_roundtrips() -> None:
    store = GraphStore()
    store.load([], 3)
    loaded = roundtrip(store)
    assert loaded.current.revision == 3 and list(loaded.current.tuples()) == []


def test_a_bad_file_is_refused_whole() -> None:
    store = GraphStore()
    store.load(["doc:d#viewer@user:u"], 2)
    buf = io.BytesIO()
    persist.dump(store.current, buf)
    good = buf.getvalue()
    bad = [
        b"",
        b"not a snapshot",
        good[:-1],  # truncated
        good[: len(good) // 2],
        good[:40] + bytes([good[40] ^ 1]) + good[41:],  # one flipped bit
    ]
    for data in bad:
        fresh = GraphStore()
        with pytest.raises(SnapshotFileError):
            persist.load(fresh, data)
        assert fresh.current.revision == 0 and fresh.interner.names == []
    used = GraphStore()
    used.load(["doc:x#viewer@user:y"], 1)
    with pytest.raises(SnapshotFileError, match="empty store"):
        persist.load(used, good)
