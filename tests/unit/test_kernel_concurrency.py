"""The C kernel under concurrent deltas: readers on old and new snapshots, one shared
Evaluator, a writer appending to the overlay chunks the readers walk.

The kernel copies overlay regions before walking them and holds each run's snapshot, and
the program's snapshot binding is shared by threads; this drives those paths with real
thread switches (a callback into Python, the closure lookup, can hand the GIL to the
writer in the middle of a check) and compares every answer with the Python nodes on the
same snapshot.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from gatehouse.engine import Evaluator
from gatehouse.graph import Delta, GraphStore, parse_object, parse_subject
from gatehouse.model import compile_schema

SCHEMA = compile_schema(
    """
    definition user {}
    definition group { relation member: user | group#member }
    definition org { relation admin: user | group#member }
    definition fund {
        relation org: org
        relation viewer: user | group#member
        permission read = viewer + org->admin
    }
    """
)
USERS = [f"user:u{i}" for i in range(40)]
GROUPS = [f"group:g{i}" for i in range(8)]
FUNDS = [f"fund:f{i}" for i in range(30)]


def _random_tuple(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.choice(FUNDS)}#viewer@{rng.choice(USERS)}"
    if kind == 1:
        return f"{rng.choice(FUNDS)}#viewer@{rng.choice(GROUPS)}#member"
    if kind == 2:
        return f"{rng.choice(GROUPS)}#member@{rng.choice(USERS)}"
    return f"org:o#admin@{rng.choice(GROUPS)}#member"


def test_kernel_answers_match_python_nodes_while_deltas_land() -> None:
    rng = random.Random(7)
    base = [f"{f}#org@org:o" for f in FUNDS] + [_random_tuple(rng) for _ in range(200)]
    # small chunks and no compaction: every delta appends, chunks are reallocated often
    store = GraphStore(min_compaction=1 << 30, switch_interval=1e-5)
    store.load(base, revision=1)
    native = Evaluator(SCHEMA)  # shared by every reader, as in the server
    python = Evaluator(SCHEMA, native=False)
    stop = threading.Event()
    errors: list[str] = []
    checked = [0]

    def reader(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set():
            snap = store.current
            if r.random() < 0.3 and snap.revision > 2:
                time.sleep(0)  # sometimes read a snapshot a few deltas old
            s = parse_subject(r.choice(USERS))
            o = parse_object(r.choice(FUNDS))
            got = native.check(snap, s, "read", o)
            want = python.check(snap, s, "read", o)
            checked[0] += 1
            if (got.allowed, got.reason) != (want.allowed, want.reason):
                errors.append(f"r{snap.revision} {s} {o}: {got} != {want}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
    try:
        for t in threads:
            t.start()
        w = random.Random(11)
        held = set(base)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not errors:
            writes = [_random_tuple(w) for _ in range(w.randrange(1, 30))]
            deletes = w.sample(sorted(held), min(len(held), w.randrange(0, 15)))
            store.apply(Delta.of(writes, deletes))
            held = (held - set(deletes)) | set(writes)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(old)
    assert not errors, errors[:5]
    assert checked[0] > 1000
    assert set(store.current.tuples()) == held
