"""The packed graph store and the compiled check path against plain models.

* Store: random loads and deltas (with and without compaction, and with the repacking copy
  cut into tiny runs) keep `tuples()`, `fwd`/`fus`/`rev` and `count` equal to a set model,
  and older snapshots never change.
* Check: the compiled fast path gives the same decision, reason and errors as the general
  walk, and the oracle's answer, on a multi-tenant schema shaped like the benchmark's
  (nested groups, org arrows, wildcards).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle import Oracle

import gatehouse.graph.store as store_mod
from gatehouse.engine import EngineError, Evaluator
from gatehouse.graph import Delta, GraphStore, Snapshot, parse_object, parse_subject
from gatehouse.graph.store import REL_BITS
from gatehouse.model import compile_schema

SCHEMA = """
definition user {}

definition group {
    relation member: user | group#member | user:*
}

definition org {
    relation admin: user | group#member
    relation member: user | group#member
    relation all_viewer: user | group#member | user:*
    relation all_editor: user | group#member
    permission edit_all = all_editor + admin
    permission view_all = all_viewer + edit_all
}

definition fund {
    relation org: org
    relation viewer: user | group#member | user:*
    relation editor: user | group#member
    permission write = editor + org->edit_all
    permission read = viewer + write + org->view_all
}
"""
COMPILED = compile_schema(SCHEMA)
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNSEEN = "user:nobody_else"


@st.composite
def graphs(draw: st.DrawFn, max_size: int = 60) -> list[str]:
    users = [f"user:u{i}" for i in range(draw(st.integers(1, 8)))]
    groups = [f"group:g{i}" for i in range(draw(st.integers(0, 6)))]
    orgs = [f"org:o{i}" for i in range(draw(st.integers(1, 2)))]
    funds = [f"fund:f{i}" for i in range(draw(st.integers(1, 6)))]
    members = [st.sampled_from(users)]
    if groups:
        members.append(st.sampled_from(groups).map(lambda g: g + "#member"))
    member = st.one_of(*members)
    wild = st.one_of(member, member, member, st.just("user:*"))

    def rel(
        objs: list[str], names: list[str], subj: st.SearchStrategy[str]
    ) -> st.SearchStrategy[str]:
        return st.builds(
            lambda o, r, s: f"{o}#{r}@{s}", st.sampled_from(objs), st.sampled_from(names), subj
        )

    kinds = [
        rel(orgs, ["admin", "member", "all_editor"], member),
        rel(orgs, ["all_viewer"], wild),
        rel(funds, ["viewer"], wild),
        rel(funds, ["editor"], member),
        rel(funds, ["org"], st.sampled_from(orgs)),
    ]
    if groups:
        kinds += [rel(groups, ["member"], wild), rel(groups, ["member"], member)]
    size = draw(st.integers(0, max_size))
    return draw(st.lists(st.one_of(*kinds), min_size=size // 2, max_size=size))


def _objects(tuples: list[str], prefix: str) -> list[str]:
    out = set()
    for t in tuples:
        left, subj = t.split("@", 1)
        out.add(left.split("#", 1)[0])
        out.add(subj.split("#", 1)[0])
    return sorted(o for o in out if o.startswith(prefix) and not o.endswith(":*"))


def _outcome(f: object) -> tuple[str, object]:
    try:
        d = f()  # type: ignore[operator]
    except EngineError as e:
        return ("error", type(e).__name__)
    return ("ok", (d.allowed, d.reason))


def compare_paths(ev: Evaluator, snap: Snapshot, tuples: list[str]) -> None:
    orc = Oracle(SCHEMA, tuples, extra_subjects=[UNSEEN])
    users = [*_objects(tuples, "user:"), UNSEEN]
    for res in _objects(tuples, "fund:") + _objects(tuples, "org:") + ["fund:never"]:
        obj = parse_object(res)
        tname = res.split(":", 1)[0]
        perms = (
            ["read", "write", "viewer", "editor"]
            if tname == "fund"
            else ["view_all", "edit_all", "admin"]
        )
        for perm in perms:
            expected = orc.subjects(res, perm) if res != "fund:never" else set()
            for u in users:
                s = parse_subject(u)
                fast = _outcome(lambda s=s, p=perm, o=obj: ev.check(snap, s, p, o))
                slow = _outcome(lambda s=s, p=perm, o=obj: ev._check_general(snap, s, p, o))
                assert fast == slow, (u, perm, res, fast, slow)
                # the kernel's one-call check against the Python prologue over the same nodes
                steps = _outcome(lambda s=s, p=perm, o=obj: ev._check_compiled(snap, s, p, o))
                assert steps == fast, (u, perm, res, steps, fast)
                assert fast[0] == "ok"
                assert fast[1][0] == (u in expected), (u, perm, res, fast)  # type: ignore[index]


@SETTINGS
@given(tuples=graphs(), compact=st.booleans())
def test_fast_check_matches_walk_and_oracle(tuples: list[str], compact: bool) -> None:
    store = GraphStore(min_compaction=0 if compact else 4096)
    snap = store.load(tuples, revision=1)
    compare_paths(Evaluator(COMPILED), snap, tuples)
    compare_paths(Evaluator(COMPILED, native=False), snap, tuples)


@SETTINGS
@given(tuples=graphs(max_size=40), writes=graphs(max_size=20), data=st.data())
def test_fast_check_after_delta(tuples: list[str], writes: list[str], data: st.DataObject) -> None:
    store = GraphStore()
    store.load(tuples, revision=1)
    pool = sorted(set(tuples) | set(writes))
    deletes = data.draw(st.lists(st.sampled_from(pool), max_size=15)) if pool else []
    snap = store.apply(Delta.of(writes, deletes))
    after = sorted((set(tuples) - set(deletes)) | set(writes))
    compare_paths(Evaluator(COMPILED), snap, after)
    compare_paths(Evaluator(COMPILED, native=False), snap, after)


def test_the_c_kernel_is_built_and_used() -> None:
    # The install builds it (pyproject ext-modules); without it checks still work but slower.
    from gatehouse.engine import evaluator as ev_mod

    assert ev_mod._kernel is not None, "gatehouse.engine._kernel was not built"
    snap = GraphStore().load(["fund:f#viewer@user:ann"], revision=1)
    ev = Evaluator(COMPILED)
    assert ev.check(snap, parse_subject("user:ann"), "read", parse_object("fund:f")).allowed
    assert ev._prog is not None and ev._prog.kernel is not None
    slow = Evaluator(COMPILED, native=False)
    assert slow.check(snap, parse_subject("user:ann"), "read", parse_object("fund:f")).allowed
    assert slow._prog is not None and slow._prog.kernel is None


def test_the_kernel_check_answers_what_it_covers() -> None:
    """check() in one C call: a Decision for a plain subject on a compiled permission, None
    (the Python path decides) for what it does not cover."""
    from gatehouse.engine.evaluator import Decision
    from gatehouse.graph import ObjectRef

    tuples = ["fund:f#viewer@user:ann", "fund:f2#viewer@user:zoe", "fund:f#viewer@group:g#member"]
    snap = GraphStore().load(tuples, revision=4)
    ev = Evaluator(COMPILED)
    ev.check(snap, parse_subject("user:ann"), "read", parse_object("fund:f"))  # compiles
    prog = ev._prog
    assert prog is not None and prog.kernel is not None
    kcheck = prog.kernel.check

    def k(subject: str, perm: str, resource: str) -> object:
        return kcheck(snap, parse_subject(subject), perm, parse_object(resource), prog.closures)

    got = k("user:ann", "read", "fund:f")
    assert type(got) is Decision and got == Decision(True, 4, "direct fund#viewer")
    assert got.allowed and got.revision == 4
    assert k("user:zoe", "read", "fund:f2") == Decision(True, 4, "direct fund#viewer")
    assert k("user:zoe", "read", "fund:f") == Decision(False, 4, "no_path")
    # refs built directly (parsing allows ASCII ids only): names built the slow way
    odd = kcheck(snap, parse_subject("user:ann"), "read", ObjectRef("fund", "fé"), prog.closures)
    assert odd == Decision(False, 4, "no_path")
    assert k("user:ann", "read", "fund:unknown") == Decision(False, 4, "no_path")
    assert k("user:nobody", "read", "fund:f") == Decision(False, 4, "no_path")
    assert k("group:g#member", "read", "fund:f") is None  # a userset subject
    assert k("user:ann", "nonexistent", "fund:f") is None  # the Python path raises
    other = GraphStore().load(tuples, revision=5)  # closures are for `snap` only
    assert (
        kcheck(other, parse_subject("user:ann"), "read", parse_object("fund:f"), prog.closures)
        is None
    )


def test_kernel_reads_old_snapshots_while_deltas_land() -> None:
    # Old snapshots stay readable through the kernel: its cached view is per snapshot, and
    # the shared overlay is read at each snapshot's own version.
    store = GraphStore(min_compaction=1 << 30)
    store.load(["fund:f#viewer@user:u0"], revision=1)
    ev = Evaluator(COMPILED)
    snaps = [store.current]
    for i in range(1, 6):
        snaps.append(
            store.apply(Delta.of([f"fund:f#viewer@user:u{i}"], [f"fund:f#viewer@user:u{i - 1}"]))
        )
    f = parse_object("fund:f")
    for i, snap in enumerate(snaps):
        for j in range(6):
            got = ev.check(snap, parse_subject(f"user:u{j}"), "read", f).allowed
            assert got == (i == j), (i, j)


def test_fast_check_depth_limit_matches_walk() -> None:
    chain = [f"group:c{i}#member@group:c{i + 1}#member" for i in range(8)]
    tuples = [*chain, "group:c8#member@user:ann", "fund:f#viewer@group:c0#member"]
    snap = GraphStore().load(tuples, revision=1)
    ann, f = parse_subject("user:ann"), parse_object("fund:f")
    for depth in (1, 3, 8, 9, 10, 50):
        ev = Evaluator(COMPILED, max_depth=depth)
        fast = _outcome(lambda ev=ev: ev.check(snap, ann, "read", f))
        slow = _outcome(lambda ev=ev: ev._check_general(snap, ann, "read", f))
        assert fast == slow, (depth, fast, slow)


# store --------------------------------------------------------------------------


def _model_indexes(snap: Snapshot, tuples: set[str]) -> None:
    """fwd/fus/rev of every key named by `tuples` equal what the tuple set implies."""
    it = snap.interner
    fwd: dict[int, set[int]] = {}
    fus: dict[int, set[int]] = {}
    rev: dict[int, set[int]] = {}
    for t in tuples:
        left, subj = t.split("@", 1)
        obj, rel = left.split("#", 1)
        oid = it.oid(obj)
        assert oid is not None
        rid = it.rids[f"{obj.split(':', 1)[0]}#{rel}"]
        sk = it.subject_key(parse_subject(subj))
        assert sk is not None
        fk = oid << REL_BITS | rid
        (fus if "#" in subj else fwd).setdefault(fk, set()).add(sk)
        rev.setdefault(sk << REL_BITS | rid, set()).add(oid)
    for fk in set(fwd) | set(fus):
        assert list(snap.fwd(fk)) == sorted(fwd.get(fk, ())), fk
        assert list(snap.fus(fk)) == sorted(fus.get(fk, ())), fk
    for rk, oids in rev.items():
        assert list(snap.rev(rk)) == sorted(oids), rk


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=graphs(max_size=50),
    steps=st.lists(st.tuples(graphs(max_size=15), st.data()), max_size=4),
    min_compaction=st.sampled_from([0, 3, 4096]),
)
def test_store_matches_set_model(
    start: list[str],
    steps: list[tuple[list[str], st.DataObject]],
    min_compaction: int,
) -> None:
    old_run = store_mod._RUN
    store_mod._RUN = 2  # exercise the cut-up copy of unchanged runs when repacking
    try:
        store = GraphStore(min_compaction=min_compaction, background_compaction=False)
        snap = store.load(start, revision=1)
        model = set(start)
        history = [(snap, set(model))]
        for writes, data in steps:
            pool = sorted(model | set(writes))
            deletes = data.draw(st.lists(st.sampled_from(pool), max_size=10)) if pool else []
            snap = store.apply(Delta.of(writes, deletes))
            model = (model - set(deletes)) | set(writes)
            history.append((snap, set(model)))
        for s, m in history:  # older snapshots are untouched by later deltas
            assert sorted(s.tuples()) == sorted(m)
            assert s.count == len(m)
            _model_indexes(s, m)
    finally:
        store_mod._RUN = old_run


def test_repack_pads_objects_interned_after_the_base() -> None:
    store = GraphStore(min_compaction=0, background_compaction=False)
    store.load(["fund:a#viewer@user:u1"], revision=1)
    # new objects on both sides, then a compaction folds them into the packed base
    snap = store.apply(Delta.of(["fund:z#viewer@user:u9", "fund:a#viewer@user:u8"]))
    assert len(snap.f_ov) == 0 and len(snap.r_ov) == 0
    assert sorted(snap.tuples()) == [
        "fund:a#viewer@user:u1",
        "fund:a#viewer@user:u8",
        "fund:z#viewer@user:u9",
    ]
    assert snap.has_tuple(store_mod.parse_tuple("fund:z#viewer@user:u9"))


def test_switch_interval_restored() -> None:
    before = sys.getswitchinterval()
    store = GraphStore(switch_interval=1e-4)
    store.load(["fund:a#viewer@user:u1"], revision=1)
    store.apply(Delta.of(["fund:a#viewer@user:u2"]))
    with pytest.raises(store_mod.DeltaError):
        store.apply(Delta.of(["fund:a#viewer@user:u3"]), revision=1)
    assert sys.getswitchinterval() == before


def test_lowering_the_switch_interval_releases_the_gil_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread already waiting for the GIL waits out the interval it started with (5 ms by
    default); the write releases the GIL once after lowering it, so such a reader waits again
    with the lowered interval (bench/gil_floor.py shows the difference)."""
    slept: list[float] = []
    monkeypatch.setattr(store_mod.time, "sleep", slept.append)
    current = [0.005]
    monkeypatch.setattr(sys, "getswitchinterval", lambda: current[0])
    monkeypatch.setattr(sys, "setswitchinterval", lambda v: current.__setitem__(0, v))
    with store_mod._Switch(0.0005):
        assert slept == [0] and current == [0.0005]
    assert current == [0.005]  # restored
    slept.clear()
    with store_mod._Switch(0.01):  # not lower than the current one: nothing to do
        assert slept == [] and current == [0.005]
    # Overlapping writers (a delta during a background compaction): the first to finish must
    # not raise the interval under the other; the last restores the original.
    outer, inner = store_mod._Switch(0.0005), store_mod._Switch(0.0005)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert current == [0.0005]
    inner.__exit__(None, None, None)
    assert current == [0.005]
    with store_mod._Switch(None):  # off: leaves the interval alone
        assert current == [0.005]


def test_background_compaction_keeps_later_deltas() -> None:
    """Deltas applied while a compaction runs survive it; contents never change."""
    store = GraphStore(min_compaction=2)
    model = {f"fund:f{i}#viewer@user:u{i}" for i in range(50)}
    store.load(sorted(model), revision=1)
    for step in range(30):
        writes = [f"fund:f{step}#editor@user:u{j}" for j in range(step % 4 + 1)]
        deletes = [f"fund:f{step}#viewer@user:u{step}"]
        snap = store.apply(Delta.of(writes, deletes))
        model = (model - set(deletes)) | set(writes)
        assert sorted(snap.tuples()) == sorted(model)
    assert store.wait_compacted(10)
    final = store.current
    assert final.revision == 31
    assert sorted(final.tuples()) == sorted(model)
    assert final.count == len(model)
    _model_indexes(final, model)


def test_snapshots_held_across_a_compaction_keep_their_overlay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An old snapshot a reader still holds when a background compaction replaces its
    overlay keeps answering exactly what it held."""
    store = GraphStore(min_compaction=2, compaction_ratio=0)
    model = {f"fund:f{i}#viewer@user:u{i}" for i in range(20)}
    store.load(sorted(model), revision=1)
    held = store.apply(Delta.of([f"fund:f{i}#editor@user:u0" for i in range(5)]))
    want = sorted(held.tuples())
    ov_size = (len(held.f_ov), len(held.r_ov))
    assert store.wait_compacted(10)
    assert store.current.f_ov is not held.f_ov  # replaced by the compaction
    time.sleep(0.05)
    assert (len(held.f_ov), len(held.r_ov)) == ov_size
    assert sorted(held.tuples()) == want


def _held_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[GraphStore, threading.Event, Snapshot, set[str]]:
    """A store whose first delta started a background compaction that waits in `_repack`
    until the returned event is set; the store, the event, that delta's snapshot and the
    model of its tuples."""
    release = threading.Event()
    real = store_mod._repack

    def held(*args: object) -> object:
        release.wait(10)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store_mod, "_repack", held)
    store = GraphStore(min_compaction=2, compaction_ratio=0)
    model = {f"fund:f{i}#viewer@user:u{i}" for i in range(20)}
    store.load(sorted(model), revision=1)
    first = store.apply(Delta.of([f"fund:f{i}#editor@user:u0" for i in range(5)]))
    model |= {f"fund:f{i}#editor@user:u0" for i in range(5)}
    assert store._compacting  # started, held in _repack
    return store, release, first, model


@pytest.mark.parametrize("step", [1, 2, 1 << 11])
def test_deltas_during_a_compaction_are_carried(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A compaction held until more deltas land: the new base's overlay carries exactly the
    groups those deltas changed (recorded as they link), and nothing is lost, whether the
    carry is one call or several (`step` groups per call)."""
    monkeypatch.setattr(store_mod, "_CARRY_STEP", step)
    store, release, first, model = _held_compaction(monkeypatch)
    later = [f"fund:f{i}#editor@user:u9" for i in range(10, 13)]
    store.apply(Delta.of(later, ["fund:f1#viewer@user:u1"]))
    model = (model | set(later)) - {"fund:f1#viewer@user:u1"}
    release.set()
    assert store.wait_compacted(10)
    final = store.current
    assert final.f_dat is not first.f_dat  # a new base was published
    assert sorted(final.tuples()) == sorted(model)
    _model_indexes(final, model)
    it = final.interner
    changed = {it.oid(f"fund:f{i}") for i in (1, 10, 11, 12)}
    assert set(final.f_ov) == changed
    assert set(final.r_ov) == {it.oid("user:u9"), it.oid("user:u1")}


def test_deltas_between_the_steps_of_the_precarry_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The carry runs a group at a time before the publish takes the write lock, and deltas
    land between its steps, rewriting groups it carried already and adding others: the
    published overlay holds the newest region of each (carried again under the lock), and
    nothing is lost."""
    monkeypatch.setattr(store_mod, "_CARRY_STEP", 1)
    store, release, first, model = _held_compaction(monkeypatch)
    before = [f"fund:f{i}#editor@user:u9" for i in range(10, 16)]
    store.apply(Delta.of(before))
    model |= set(before)
    # Between pre-carry steps (on the compaction's thread, the turn handed back): rewrite
    # groups carried already (f10, f11, u9), then add new ones (f17, u7).
    between = [
        Delta.of(["fund:f10#viewer@user:u3"], ["fund:f11#editor@user:u9"]),
        Delta.of(["fund:f17#viewer@user:u7", "fund:f10#editor@user:u7"]),
    ]
    inside = [False]
    injected: list[int] = []
    real_give_way = store._give_way

    def give_way() -> None:
        if not (inside[0] and between):
            real_give_way()
            return
        store._turn.release()
        try:
            injected.append(store.apply(between.pop(0)).revision)
        finally:
            store._turn.acquire()

    real_precarry = store._precarry

    def precarry(*args: object) -> None:
        inside[0] = True
        try:
            real_precarry(*args)  # type: ignore[arg-type]
        finally:
            inside[0] = False

    monkeypatch.setattr(store, "_give_way", give_way)
    monkeypatch.setattr(store, "_precarry", precarry)
    release.set()
    assert store.wait_compacted(10)
    assert injected == [4, 5]  # both landed while the carry ran in steps
    model = (model | {"fund:f10#viewer@user:u3"}) - {"fund:f11#editor@user:u9"}
    model |= {"fund:f17#viewer@user:u7", "fund:f10#editor@user:u7"}
    final = store.current
    assert final.f_dat is not first.f_dat and final.revision == 5
    assert sorted(final.tuples()) == sorted(model)
    _model_indexes(final, model)
    it = final.interner
    changed = {it.oid(f"fund:f{i}") for i in (*range(10, 16), 17)}
    assert set(final.f_ov) == changed
    assert set(final.r_ov) == {it.oid(u) for u in ("user:u9", "user:u3", "user:u7")}


def test_long_reverse_runs_decode() -> None:
    """Runs longer than the byte-copy threshold decode to the same oids as short ones."""
    tuples = [f"fund:f{i}#viewer@user:u" for i in range(100)] + ["fund:f7#editor@user:u"]
    store = GraphStore(min_compaction=1, background_compaction=False)
    store.load(tuples, revision=1)
    snap = store.apply(Delta.of(["fund:f100#viewer@user:u"], ["fund:f3#viewer@user:u"]))
    model = (set(tuples) - {"fund:f3#viewer@user:u"}) | {"fund:f100#viewer@user:u"}
    _model_indexes(snap, model)
    ev = Evaluator(COMPILED)
    ids = ev.list_allowed(snap, parse_subject("user:u"), "read", "fund")
    assert ids == sorted(f"f{i}" for i in range(101) if i != 3)


def test_closure_cache_is_per_snapshot() -> None:
    """A cached closure never answers for another snapshot; no cache gives the same answers."""
    store = GraphStore()
    s1 = store.load(
        [
            "group:a#member@user:ann",
            "group:b#member@group:a#member",
            "fund:f#viewer@group:b#member",
        ],
        revision=1,
    )
    s2 = store.apply(Delta.of([], ["group:b#member@group:a#member"]))
    ann, f = parse_subject("user:ann"), parse_object("fund:f")
    cached, plain = Evaluator(COMPILED), Evaluator(COMPILED, closure_cache=0)
    for ev in (cached, plain):
        for _ in range(2):
            assert ev.check(s1, ann, "read", f).allowed
            assert not ev.check(s2, ann, "read", f).allowed
            assert ev.check(s1, ann, "read", f).reason == "through group:b#member"
    tiny = Evaluator(COMPILED, closure_cache=1)  # cleared on every new subject
    for u in ("user:ann", "user:bob", "user:ann"):
        assert tiny.check(s1, parse_subject(u), "read", f).allowed is (u == "user:ann")
    with pytest.raises(ValueError):
        Evaluator(COMPILED, closure_cache=-1)


@SETTINGS
@given(tuples=graphs())
def test_c_load_packer_matches_the_python_one(tuples: list[str]) -> None:
    assert store_mod._packer is not None, "gatehouse.graph._pack was not built"
    # Duplicates and several loads into one interner, as a re-sync does.
    data = tuples + tuples[: len(tuples) // 2]
    it = store_mod.Interner()
    for _ in range(2):
        flat = store_mod._load_flat(it, data)
        groups = store_mod._load_groups(it, data)
        assert [a.tolist() for a in flat] == [a.tolist() for a in groups]
        assert flat[0].typecode == groups[0].typecode == store_mod._OFF


@SETTINGS
@given(tuples=graphs(), native=st.booleans())
def test_check_many_answers_as_check_does(tuples: list[str], native: bool) -> None:
    snap = GraphStore().load(tuples, revision=1)
    ev = Evaluator(COMPILED, native=native)
    users = [*_objects(tuples, "user:"), UNSEEN, "group:g0#member", "user:*"]
    queries = []
    for res in _objects(tuples, "fund:") + _objects(tuples, "org:") + ["fund:never"]:
        perms = ["read", "write", "viewer"] if res.startswith("fund:") else ["view_all", "admin"]
        queries += [(parse_subject(u), p, parse_object(res)) for u in users for p in perms]
    single = [_outcome(lambda q=q: ev.check(snap, *q)) for q in queries]
    ok = [q for q, o in zip(queries, single, strict=True) if o[0] == "ok"]
    batch = Evaluator(COMPILED, native=native).check_many(snap, ok)
    assert [("ok", (d.allowed, d.reason)) for d in batch] == [o for o in single if o[0] == "ok"]
    assert all(d.revision == 1 for d in batch)
    for q, o in zip(queries, single, strict=True):
        if o[0] == "error":
            with pytest.raises(EngineError):
                ev.check_many(snap, [q])


@SETTINGS
@given(tuples=graphs(max_size=40), writes=graphs(max_size=20), depth=st.sampled_from([1, 2, 50]))
def test_kernel_closure_matches_the_python_one(
    tuples: list[str], writes: list[str], depth: int
) -> None:
    from gatehouse.engine.evaluator import _closure_packed

    store = GraphStore(min_compaction=1 << 30)
    store.load(tuples, revision=1)
    snap = store.apply(Delta.of(writes, tuples[:3]))  # overlay regions on both indexes
    ev = Evaluator(COMPILED, max_depth=depth)
    prog = ev._program(snap.interner)
    assert prog.kernel is not None
    it = snap.interner
    keys = [o << REL_BITS for o in range(len(it.names))] + [-1]
    for sk in keys:
        for wk in (-1, *keys[:3]):
            got = prog.kernel.closure(snap, sk, wk)
            assert got == _closure_packed(snap, sk, wk, prog.closure_rids, depth), (sk, wk)


@SETTINGS
@given(
    groups=st.dictionaries(st.integers(0, 5), st.lists(st.integers(0, 60), unique=True)),
    edits=st.dictionaries(st.tuples(st.integers(0, 7), st.integers(0, 70)), st.booleans()),
    overlaid=st.sets(st.integers(0, 5)),
    chunk=st.sampled_from([4, 16, 1 << 16]),
)
def test_c_append_matches_set_semantics(
    groups: dict[int, list[int]],
    edits: dict[tuple[int, int], bool],
    overlaid: set[int],
    chunk: int,
) -> None:
    """GraphStore.apply's C writer: each edited group read from the base or from its newest
    overlay region not newer than the snapshot (a newer one is ignored), edited, written as
    a region of the new version into chunks of at most `chunk` entries (one region may
    exceed it alone); groups whose edits change nothing are not written."""
    from array import array

    assert store_mod._packer is not None
    nbase = 6
    off, dat = array("I", [0]), array("q")
    base = {o: sorted(groups.get(o, [])) if o not in overlaid else [] for o in range(nbase)}
    for o in range(nbase):
        dat.extend(base[o])
        off.append(len(dat))
    ovl = [array("q", [0, 0, 0])]  # some entries already in the last chunk
    ov = store_mod.Overlay()
    seen = dict(base)
    for o in sorted(overlaid):  # an older region the snapshot reads, and a newer one it must not
        old = store_mod.put_region(ovl, 3, -1, array("q", sorted(groups.get(o, []))))
        ov[o] = store_mod.put_region(ovl, 9, old, array("q", [999]))
        seen[o] = sorted(groups.get(o, []))
    pairs = array("q", [x for (o, e), p in sorted(edits.items()) for x in (o, e << 1 | p)])
    refs, size, net = [], 0, 0
    i, n = 0, len(pairs) // 2
    while i < n:  # in steps of 3 edits: each call ends at a group boundary
        got, s, d, nxt = store_mod._packer.append(
            ovl, ov.shards, off, dat, nbase, 5, pairs.tobytes(), 7, chunk, i, 3
        )
        assert nxt > i and (nxt == n or pairs[2 * nxt] != pairs[2 * nxt - 2])
        refs, size, net, i = refs + got, size + s, net + d, nxt
    want_net = 0
    written = {}
    for o in range(8):
        mine = {e: p for (oo, e), p in edits.items() if oo == o}
        now = set(seen.get(o, []))
        after = (now - {e for e, p in mine.items() if not p}) | {e for e, p in mine.items() if p}
        want_net += len(after) - len(now)
        if after != now:
            written[o] = sorted(after)
    assert net == want_net
    assert [o for o, _ in refs] == sorted(written)
    assert size == sum(len(g) + 3 for g in written.values())
    for o, ref in refs:
        got = store_mod.region(ovl, ref, 7)
        assert got is not None
        c, lo, hi = got
        assert c[lo - 3] == 7 and c[lo - 2] == ov.get(o, -1)
        assert c[lo:hi].tolist() == written[o]
    for c in ovl[1:]:  # a chunk past the limit holds one region alone
        assert len(c) <= chunk or c[2] + 3 == len(c)


@SETTINGS
@given(tuples=graphs(max_size=40), writes=graphs(max_size=20), depth=st.sampled_from([1, 2, 50]))
def test_kernel_set_algebra_matches_the_python_one(
    tuples: list[str], writes: list[str], depth: int
) -> None:
    """list-allowed's building blocks, C against Python on the same snapshot (overlay
    regions on both indexes): reverse runs of single subjects and of every object at once
    (many runs: the sort path), nested closures with their depth error, names."""
    from gatehouse.engine.evaluator import _ONE, DepthExceeded, _python_sets

    store = GraphStore(min_compaction=1 << 30)
    store.load(tuples, revision=1)
    snap = store.apply(Delta.of(writes, tuples[:3]))
    ev = Evaluator(COMPILED, max_depth=depth)
    prog = ev._program(snap.interner)
    assert prog.sets is not None
    c, py = prog.sets, _python_sets(depth)
    it = snap.interner
    every = b"".join(_ONE(o) for o in range(len(it.names)))
    rids = range(len(it.rel_names))
    for rid in rids:
        for srel in (0, rid):
            assert c.revs(snap, every, srel, rid) == py.revs(snap, every, srel, rid)
            for o in range(len(it.names)):
                assert c.revs(snap, _ONE(o), srel, rid) == py.revs(snap, _ONE(o), srel, rid)
        for seeds in (every, *(_ONE(o) for o in range(len(it.names)))):
            outcomes = []
            for impl in (c, py):
                try:
                    outcomes.append(impl.nested(snap, seeds, rid))
                except DepthExceeded as e:
                    outcomes.append(str(e))
            assert outcomes[0] == outcomes[1], (rid, seeds)
    assert c.names(it.names, every, 0) == py.names(it.names, every, 0) == sorted(it.names)
    assert c.names(it.names, every, 2) == [n[2:] for n in sorted(it.names)]


@SETTINGS
@given(parts=st.lists(st.sets(st.integers(0, (1 << 32) - 1)), max_size=6))
def test_kernel_union_and_intersection_match_sets(parts: list[set[int]]) -> None:
    from gatehouse.engine.evaluator import _packed, _python_sets

    c = Evaluator(COMPILED)._program(GraphStore().load([], revision=1).interner).sets
    assert c is not None
    py = _python_sets(50)
    packed = [_packed(p) for p in parts]
    assert c.union(packed) == py.union(packed) == _packed(set().union(*parts))
    for a, sa in zip(packed, parts, strict=True):
        for b, sb in zip(packed, parts, strict=True):
            assert c.intersect(a, b) == py.intersect(a, b) == _packed(sa & sb)


def test_kernel_revs_sort_many_runs() -> None:
    """Hundreds of results from interleaved runs: the radix sort, not the insertion sort."""
    from gatehouse.engine.evaluator import _ONE, _python_sets

    tuples = [f"fund:f{(i * 7919) % 600}#viewer@user:u{i % 7}" for i in range(600)]
    snap = GraphStore().load(tuples, revision=1)
    prog = Evaluator(COMPILED)._program(snap.interner)
    assert prog.sets is not None
    it = snap.interner
    users = b"".join(_ONE(it.oid(f"user:u{k}") or 0) for k in (6, 2, 0, 5, 1, 3, 4, 2))
    rid = it.rids["fund#viewer"]
    got = prog.sets.revs(snap, users, 0, rid)
    assert got == _python_sets(50).revs(snap, users, 0, rid)
    assert len(got) == 600 * 8
    assert sorted(prog.sets.names(it.names, got, 5)) == sorted(f"f{i}" for i in range(600))


@SETTINGS
@given(
    net=st.dictionaries(
        st.tuples(st.integers(0, 1 << 20), st.integers(1, 300), st.integers(0, 1 << 20)),
        st.booleans(),
    ),
    userset=st.booleans(),
)
def test_c_edits_match_the_python_changes(
    net: dict[tuple[int, int, int], bool], userset: bool
) -> None:
    """The C split of a delta's net changes into per-index edits, against the formulas the
    Python path uses (store._fentry / _rentry): same objects, entries and order."""
    from array import array

    assert store_mod._packer is not None
    assert store_mod._packer.LAYOUT == (REL_BITS, store_mod.F_REL, store_mod.R_REL, 56)
    keyed = {}
    for (oid, rid, so), present in net.items():
        sk = so << REL_BITS | (rid if userset else 0)
        keyed[oid << 56 | store_mod._fentry(rid, sk)] = present
    f, r = store_mod._packer.edits(keyed)
    want_f, want_r = [], []
    for key, present in keyed.items():
        oid, e = key >> 56, key & ((1 << 56) - 1)
        sk = e & store_mod.SK_MASK
        want_f.append((oid, e << 1 | present))
        rentry = store_mod._rentry(oid, e >> store_mod.F_REL, sk)
        want_r.append((sk >> REL_BITS, rentry << 1 | present))
    for got, want in ((f, want_f), (r, want_r)):
        a = array("q")
        a.frombytes(got)
        assert list(zip(a[::2], a[1::2], strict=True)) == sorted(want)


@SETTINGS
@given(
    groups=st.dictionaries(
        st.integers(0, 30),
        st.lists(
            st.tuples(st.integers(1, 9), st.lists(st.integers(0, 99), max_size=8)), max_size=3
        ),
    ),
    since=st.integers(0, 9),
    chunk=st.sampled_from([4, 16, 1 << 16]),
)
def test_c_carry_matches_the_python_one(
    groups: dict[int, list[tuple[int, list[int]]]], since: int, chunk: int
) -> None:
    """The overlay a compaction keeps: each listed group's newest region if newer than
    `since`, alone in fresh chunks; C and Python give the same overlay."""
    from array import array

    assert store_mod._packer is not None
    ovl = [array("q")]
    ov = store_mod.Overlay()
    for oid, versions in groups.items():  # older regions first, each linking the previous
        for ver, entries in sorted(versions):
            ov[oid] = store_mod.put_region(ovl, ver, ov.get(oid, -1), array("q", sorted(entries)))
    oids = sorted(ov)

    def fresh() -> tuple[store_mod.Overlay, list[array[int]]]:
        return store_mod.Overlay(), [array("q")]

    def c_carry(oids: list[int], new_ov: store_mod.Overlay, new_ovl: list[array[int]]) -> int:
        return store_mod._packer.carry(ov.shards, ovl, oids, since, chunk, new_ov.shards, new_ovl)

    def py_carry(oids: list[int], new_ov: store_mod.Overlay, new_ovl: list[array[int]]) -> int:
        return store_mod._carry(ov, ovl, oids, since, chunk, new_ov, new_ovl)

    c_ov, c_ovl = fresh()
    c_size = c_carry(oids, c_ov, c_ovl)
    monkey = store_mod._CHUNK
    p_ov, p_ovl = fresh()
    try:
        store_mod._CHUNK = chunk  # the Python one appends through _chunk_for
        p_size = py_carry(oids, p_ov, p_ovl)
    finally:
        store_mod._CHUNK = monkey
    assert c_size == p_size
    newer = {o for o in oids if ovl[ov[o] >> 32][ov[o] & 0xFFFFFFFF] > since}
    assert set(c_ov) == set(p_ov) == newer
    for o in c_ov:
        got = store_mod.region(c_ovl, c_ov[o], 1 << 40)
        assert got is not None
        assert got[0][got[1] - 2] == -1  # the only region of its group
        want = store_mod.region(p_ovl, p_ov[o], 1 << 40)
        assert want is not None
        assert got[0][got[1] : got[2]] == want[0][want[1] : want[2]]
    assert [x.tolist() for x in c_ovl] == [x.tolist() for x in p_ovl]

    def in_two(
        carry: Callable[[list[int], store_mod.Overlay, list[array[int]]], int],
        todo: list[int],
        cut: int,
    ) -> tuple[dict[int, int], int, list[list[int]]]:
        """`carry` of `todo` in two calls, the second going on from the first (as a
        compaction does, so readers get the GIL between calls): (overlay, entries, chunks)."""
        try:
            store_mod._CHUNK = chunk
            new_ov, new_ovl = fresh()
            size = carry(todo[:cut], new_ov, new_ovl)
            size += carry(todo[cut:], new_ov, new_ovl)
        finally:
            store_mod._CHUNK = monkey
        return new_ov.as_dict(), size, [x.tolist() for x in new_ovl]

    c_whole = (c_ov.as_dict(), c_size, [x.tolist() for x in c_ovl])
    p_whole = (p_ov.as_dict(), p_size, [x.tolist() for x in p_ovl])
    # In several calls: the same overlay, chunk for chunk, in C and in Python.
    for cut in {0, len(oids) // 3, len(oids) // 2, len(oids)}:
        assert in_two(c_carry, oids, cut) == c_whole
        assert in_two(py_carry, oids, cut) == p_whole
    # Oids repeated (the deltas' record of what they changed has one per delta): each group
    # is carried once, where it first appears.
    again = oids + oids[::-1] + oids[::2]
    for cut in {0, len(again) // 3, len(again)}:
        for carry in (c_carry, py_carry):
            assert in_two(carry, again, cut) == c_whole


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=graphs(max_size=40),
    steps=st.lists(st.tuples(graphs(max_size=12), st.data()), min_size=1, max_size=4),
    held_at=st.integers(0, 4),
    run=st.sampled_from([1, 2, 3, 7, 1 << 14]),
)
def test_c_repack_matches_the_python_one(
    start: list[str],
    steps: list[tuple[list[str], st.DataObject]],
    held_at: int,
    run: int,
) -> None:
    """A compaction's new base in C steps (`visible`, `sort_pairs`, `merge`) equals the
    Python repack of the same snapshot, whatever the step size, for a snapshot held while
    later deltas add newer regions (what a background compaction packs), with objects
    interned after the base (empty groups past it)."""
    assert store_mod._packer is not None
    store = GraphStore(min_compaction=1 << 30, compaction_ratio=0)
    snap = store.load(start, revision=1)
    model = set(start)
    held = snap
    for k, (writes, data) in enumerate(steps):
        pool = sorted(model | set(writes))
        deletes = data.draw(st.lists(st.sampled_from(pool), max_size=8)) if pool else []
        snap = store.apply(Delta.of(writes, deletes))
        model = (model - set(deletes)) | set(writes)
        if k == held_at:
            held = snap
    n = len(store.interner.names)
    old_run, old_visible = store_mod._RUN, store_mod._VISIBLE_STEP
    store_mod._RUN = store_mod._VISIBLE_STEP = run
    steps_taken = []
    try:
        for forward in (True, False):
            off, dat = (held.f_off, held.f_dat) if forward else (held.r_off, held.r_dat)
            want = store_mod._repack_py(off, dat, held.overlay(forward), n)
            got = store_mod._repack(held, forward, n, lambda: steps_taken.append(1))
            assert got[0].typecode == "I" and got[1].typecode == "q"
            assert got == want
    finally:
        store_mod._RUN, store_mod._VISIBLE_STEP = old_run, old_visible
    if run == 1 and n:
        assert len(steps_taken) >= n  # one object or entry per step


def test_c_merge_rejects_bad_input() -> None:
    """The merge step refuses pairs out of order or past n, new arrays of the wrong sizes,
    and offsets past the entries."""
    from array import array

    assert store_mod._packer is not None
    merge = store_mod._packer.merge
    off, dat = array("I", [0, 1]), array("q", [5])
    ovl = [array("q", [1, -1, 1, 9])]

    def fresh(n: int, entries: int) -> tuple[array[int], array[int]]:
        return array("I", [0]) * (n + 1), array("q", [0]) * entries

    for pairs in (array("q", [3, 0]), array("q", [1, 0, 0, 0])):
        with pytest.raises(ValueError):
            merge(*fresh(2, 2), off, dat, 2, ovl, pairs, 0, 0, 100)
    new_off, new_dat = fresh(3, 2)
    assert merge(new_off, new_dat, off, dat, 3, ovl, array("q", [1, 0]), 0, 0, 100) == (1, 3)
    assert (list(new_off), list(new_dat)) == ([0, 1, 2, 2], [5, 9])
    with pytest.raises(IndexError):  # new_dat too short
        merge(*fresh(3, 1), off, dat, 3, ovl, array("q", [1, 0]), 0, 0, 100)
    with pytest.raises(ValueError):  # new_off not n + 1 long
        merge(*fresh(2, 2), off, dat, 3, ovl, array("q", [1, 0]), 0, 0, 100)
    with pytest.raises(IndexError):  # offsets past the entries
        merge(*fresh(1, 9), array("I", [0, 9]), dat, 1, ovl, array("q"), 0, 0, 100)
    with pytest.raises(TypeError):
        merge(*fresh(1, 1), array("q", [0, 1]), dat, 1, ovl, array("q"), 0, 0, 1)


def test_sized_arrays_are_real_arrays_of_the_size_asked() -> None:
    """`sized` makes an array of the template's type and typecode, n items long, that
    behaves as any other once written (it is the new base of every compaction)."""
    from array import array

    assert store_mod._packer is not None and store_mod._packer.ARRAYS_SIZED
    sized = store_mod._packer.sized
    for code, n in (("q", 0), ("q", 5), ("I", 3), ("I", 1 << 18)):
        a = sized(array(code), n)
        assert type(a) is array and a.typecode == code and len(a) == n
        a[:] = array(code, range(n))
        assert a == array(code, range(n))
        a.extend(array(code, [7]))  # grows and shrinks as usual
        assert a[-1] == 7 and len(a) == n + 1
        del a[: n // 2]
        assert len(a) == n + 1 - n // 2
    with pytest.raises(ValueError):
        sized(array("q"), -1)


def test_a_replaced_base_is_freed_in_slices_once_no_snapshot_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a background compaction, the old base's arrays and overlay dicts are cut down a
    slice at a time by the compaction's thread, but only once no snapshot holds them: a
    snapshot read meanwhile keeps its whole base, its overlay and its answers."""
    import gc
    import weakref

    monkeypatch.setattr(store_mod, "_REAP_STEP", 3)
    store = GraphStore(min_compaction=3, compaction_ratio=0)
    tuples = [f"fund:f{i}#viewer@user:u{j}" for i in range(30) for j in range(3)]
    store.load(tuples, revision=1)
    store.apply(Delta.of(["fund:f0#viewer@user:u8"]))
    held = store.current  # a base and an overlay, which the compaction below replaces
    before = sorted(held.tuples())
    arrays = [held.f_dat, held.r_dat, held.f_off, held.r_off]
    sizes = [len(a) for a in arrays]
    refs = [weakref.ref(a) for a in arrays]
    del arrays
    visible = (held.overlay(True), held.overlay(False))
    assert [len(v) for v in visible] == [1, 1]
    store.apply(Delta.of([f"fund:f{i}#editor@user:u9" for i in range(5)]))
    assert store.wait_compacted(10) and store.compactions == 1
    assert held.f_dat is not store.current.f_dat
    dicts = (held.f_ov.as_dict(), held.r_ov.as_dict())  # shared with the deltas after it
    time.sleep(0.1)  # the reaper waits: `held` still reads the old base and overlay
    assert [len(a) for a in (held.f_dat, held.r_dat, held.f_off, held.r_off)] == sizes
    assert (held.f_ov.as_dict(), held.r_ov.as_dict()) == dicts
    assert (held.overlay(True), held.overlay(False)) == visible
    assert sorted(held.tuples()) == before
    del held
    gc.collect()
    deadline = time.monotonic() + 10
    while any(r() is not None for r in refs):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    want = sorted(
        set(tuples) | {"fund:f0#viewer@user:u8"} | {f"fund:f{i}#editor@user:u9" for i in range(5)}
    )
    assert sorted(store.current.tuples()) == want


def test_reap_cuts_arrays_and_overlays_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the reaper holds alone is freed in steps, each holding the writers' turn: a large
    array's pages go back to the OS `_REAP_STEP` entries at a time, an overlay's dicts go
    `_REAP_SHARDS` at a time; a small array is freed whole, and what something else holds is
    left."""
    from array import array

    assert store_mod._packer is not None
    real = store_mod._packer
    store = GraphStore()
    released: list[tuple[int, int]] = []

    class Packer:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def release(self, arr: array[int], start: int, stop: int) -> None:
            assert store._turn.locked()
            released.append((start, stop))
            real.release(arr, start, stop)

    class Shards(list):  # type: ignore[type-arg]
        def __delitem__(self, at: object) -> None:
            assert store._turn.locked()
            cuts.append(len(self))
            super().__delitem__(at)  # type: ignore[index]

    cuts: list[int] = []
    ov = store_mod.Overlay((i, i) for i in range(5000))
    ov.shards = Shards(ov.shards)
    monkeypatch.setattr(store_mod, "_packer", Packer())
    monkeypatch.setattr(store_mod, "_REAP_STEP", 1 << 16)
    monkeypatch.setattr(store_mod, "_REAP_WAIT", 0.2)
    big = array("q", range(300_000))  # 2.4 MB
    kept = array("q", range(500))
    old: list[object] = [big, array("q", range(1000)), ov, kept]
    del big, ov
    store._reap(old)  # type: ignore[arg-type]
    assert old == []
    assert released == [(lo, min(lo + (1 << 16), 300_000)) for lo in range(0, 300_000, 1 << 16)]
    step = store_mod._REAP_SHARDS
    assert cuts == list(range(store_mod._SHARD_MASK + 1, 0, -step))
    assert len(kept) == 500 and kept[-1] == 499  # held here: waited for, never touched


def test_touch_names_reads_without_changing_the_interner() -> None:
    """`_pack.touch_names` (run before a delta's lookups, GIL released) leaves the interner
    as it was, names known or not, and refuses what is not a list of str."""
    from gatehouse.graph import Interner

    assert store_mod._packer is not None
    it = Interner()
    with it.lock:
        oids = [it.intern_object(f"user:u{i}") for i in range(3000)]  # the slots grew
    slots, names = it._slots.tobytes(), list(it.names)
    with it.lock:
        store_mod._packer.touch_names(it, ["user:u7", "user:nobody", "fund:f1", ""])
    assert (it._slots.tobytes(), it.names) == (slots, names)
    assert [it.oid(f"user:u{i}") for i in range(3000)] == oids and it.oid("fund:f1") is None
    with pytest.raises(TypeError):
        store_mod._packer.touch_names(it, ["user:u1", 5])  # type: ignore[list-item]
    with pytest.raises((TypeError, AttributeError)):
        store_mod._packer.touch_names(object(), ["user:u1"])


def test_release_returns_pages_and_leaves_the_array_whole() -> None:
    """`_pack.release` zeroes the whole pages inside the range (they went back to the OS)
    and nothing outside it; the array keeps its length."""
    from array import array

    assert store_mod._packer is not None
    a = array("q", [7]) * (1 << 16)  # 512 KB: at least 126 whole pages inside
    store_mod._packer.release(a, 1000, 60_000)
    assert len(a) == 1 << 16
    assert a[:1000] == array("q", [7]) * 1000 and a[60_000:] == array("q", [7]) * (len(a) - 60_000)
    zeros = sum(1 for x in a[1000:60_000] if x == 0)
    assert zeros >= 60_000 - 1000 - 1024  # all but the partial pages at both ends
    with pytest.raises(IndexError):
        store_mod._packer.release(a, 5, 1 << 20)
