"""Property tests: the engine agrees with the naive fixpoint oracle on random graphs."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle import Oracle

from gatehouse.engine import Evaluator
from gatehouse.graph import Delta, GraphStore, Snapshot, parse_object, parse_subject
from gatehouse.model import compile_schema

SCHEMA = """
definition user {}

definition group {
    relation member: user | group#member
}

definition org {
    relation admin: user | group#member
    relation member: user | group#member
    permission access = admin + member
}

definition folder {
    relation org: org
    relation parent: folder
    relation viewer: user | group#member | user:*
    permission read = viewer + parent->read + org->admin
}

definition doc {
    relation org: org
    relation parent: folder
    relation viewer: user | group#member | user:*
    relation editor: user | group#member | user:*
    relation banned: user | group#member | user:*
    permission edit = editor + org->admin
    permission read = (viewer + edit + parent->read) - banned
    permission both = viewer & editor
    permission org_read = read & org->access
    permission strict = edit - banned
    permission member_view = viewer & org->member
}
"""

COMPILED = compile_schema(SCHEMA)
UNSEEN = "user:nobody_else"  # a user that never appears in any tuple
PERMS = {
    "group": ["member"],
    "org": ["admin", "member", "access"],
    "folder": ["viewer", "read"],
    "doc": [
        *("viewer", "editor", "banned", "edit", "read"),
        *("both", "org_read", "strict", "member_view"),
    ],
}
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def tuple_lists(draw: st.DrawFn, max_size: int = 60) -> list[str]:
    nu = draw(st.integers(1, 30))
    ng = draw(st.integers(0, 12))
    nf = draw(st.integers(0, 5))
    nd = draw(st.integers(1, 15))
    users = [f"user:u{i}" for i in range(nu)]
    groups = [f"group:g{i}" for i in range(ng)]
    folders = [f"folder:f{i}" for i in range(nf)]
    docs = [f"doc:d{i}" for i in range(nd)]
    orgs = ["org:o0", "org:o1"]

    members = [st.sampled_from(users)]
    if groups:
        members.append(st.sampled_from(groups).map(lambda g: g + "#member"))
    member = st.one_of(*members)
    grant = st.one_of(member, member, member, st.just("user:*"))

    def rel(
        objs: list[str], names: list[str], subj: st.SearchStrategy[str]
    ) -> st.SearchStrategy[str]:
        return st.builds(
            lambda o, r, s: f"{o}#{r}@{s}", st.sampled_from(objs), st.sampled_from(names), subj
        )

    kinds = [
        rel(orgs, ["admin", "member"], member),
        rel(docs, ["viewer", "editor", "banned"], grant),
        rel(docs, ["org"], st.sampled_from(orgs)),
    ]
    if groups:
        kinds.append(rel(groups, ["member"], member))
        kinds.append(rel(groups, ["member"], member))
    if folders:
        kinds += [
            rel(folders, ["viewer"], grant),
            rel(folders, ["parent"], st.sampled_from(folders)),
            rel(folders, ["org"], st.sampled_from(orgs)),
            rel(docs, ["parent"], st.sampled_from(folders)),
        ]
    # Draw the size first: hypothesis' own list sizes stay small, and dense graphs (long
    # group chains, cycles, shared folders) are where evaluation strategies disagree.
    size = draw(st.integers(0, max_size))
    return draw(st.lists(st.one_of(*kinds), min_size=size // 2, max_size=size))


def _users(tuples: list[str]) -> list[str]:
    out = {t.split("@", 1)[1] for t in tuples}
    return [*sorted(u for u in out if u.startswith("user:") and u != "user:*"), UNSEEN]


def _resources(tuples: list[str]) -> list[str]:
    objs = set()
    for t in tuples:
        left, subj = t.split("@", 1)
        objs.add(left.split("#", 1)[0])
        objs.add(subj.split("#", 1)[0])
    return sorted(o for o in objs if o.split(":", 1)[0] in PERMS and not o.endswith(":*"))


def compare(ev: Evaluator, snap: Snapshot, tuples: list[str], explain_every: int = 7) -> None:
    orc = Oracle(SCHEMA, tuples, extra_subjects=[UNSEEN])
    users = _users(tuples)
    resources = _resources(tuples)
    graph_users = set(users) - {UNSEEN}
    usersets = sorted({r + "#member" for r in resources if r.startswith("group:")})
    has_wild = any(t.endswith("@user:*") for t in tuples)
    n = 0
    for res in resources:
        tname = res.split(":", 1)[0]
        obj = parse_object(res)
        for perm in PERMS[tname]:
            expected = orc.subjects(res, perm)
            for u in users + usersets:
                got = ev.check(snap, parse_subject(u), perm, obj)
                assert got.allowed == (u in expected), (u, perm, res, got)
                assert got.revision == snap.revision
                n += 1
                if n % explain_every == 0:
                    ex = ev.explain(snap, parse_subject(u), perm, obj)
                    assert ex.decision.allowed == got.allowed, (u, perm, res)
                    assert ex.proof.allowed == got.allowed, (u, perm, res, ex.proof.render())
            listed = ev.list_subjects(snap, obj, perm, "user")
            assert len(listed) == len(set(listed)), listed
            concrete = set(listed) - {"user:*"}
            allowed_here = expected & graph_users
            assert concrete <= allowed_here, (perm, res, listed, sorted(allowed_here))
            assert ("user:*" in listed) == (UNSEEN in expected), (perm, res, listed)
            if "user:*" not in listed:
                assert concrete == allowed_here, (perm, res, listed, sorted(allowed_here))
            if not has_wild:
                assert concrete == allowed_here, (perm, res, listed, sorted(allowed_here))
    for tname, perms in PERMS.items():
        for perm in perms:
            for u in users + usersets:
                got_ids = ev.list_allowed(snap, parse_subject(u), perm, tname)
                assert len(got_ids) == len(set(got_ids))
                assert got_ids == sorted(got_ids)
                want = orc.allowed(u, perm, tname)
                assert set(got_ids) == want, (u, perm, tname, got_ids, sorted(want))


@SETTINGS
@given(tuples=tuple_lists(), compact=st.booleans(), native=st.booleans())
def test_engine_matches_oracle(tuples: list[str], compact: bool, native: bool) -> None:
    # native=False: the Python nodes and the Python set algebra of list-allowed, the
    # fallback of installs without the C kernel
    store = GraphStore(min_compaction=0 if compact else 4096)
    snap = store.load(tuples, revision=1)
    compare(Evaluator(COMPILED, native=native), snap, tuples)


@SETTINGS
@given(
    tuples=tuple_lists(max_size=40),
    writes=tuple_lists(max_size=15),
    data=st.data(),
    compact=st.booleans(),
    native=st.booleans(),
)
def test_engine_matches_oracle_after_delta(
    tuples: list[str], writes: list[str], data: st.DataObject, compact: bool, native: bool
) -> None:
    store = GraphStore(min_compaction=0 if compact else 4096)
    store.load(tuples, revision=1)
    pool = sorted(set(tuples) | set(writes))
    deletes = data.draw(st.lists(st.sampled_from(pool), max_size=15)) if pool else []
    snap = store.apply(Delta.of(writes, deletes), revision=5)
    assert snap.revision == 5
    after = sorted((set(tuples) - set(deletes)) | set(writes))
    assert sorted(snap.tuples()) == after
    assert snap.count == len(after)
    ev = Evaluator(COMPILED, native=native)
    compare(ev, snap, after)
    # A second delta that undoes part of the first.
    more = data.draw(st.lists(st.sampled_from(after), max_size=10)) if after else []
    snap2 = store.apply(Delta.of(deletes, more))
    final = sorted((set(after) - set(more)) | set(deletes))
    assert snap2.revision == 6
    assert sorted(snap2.tuples()) == final
    compare(ev, snap2, final, explain_every=11)


@st.composite
def dense_groups(draw: st.DrawFn) -> list[str]:
    """Few users, many nested groups and cycles: stresses the cycle cut and the memo tables."""
    ng = draw(st.integers(1, 12))
    groups = [f"group:g{i}" for i in range(ng)]
    users = [f"user:u{i}" for i in range(draw(st.integers(1, 4)))]
    nest = st.builds(
        lambda a, b: f"{a}#member@{b}#member", st.sampled_from(groups), st.sampled_from(groups)
    )
    join = st.builds(
        lambda g, u: f"{g}#member@{u}", st.sampled_from(groups), st.sampled_from(users)
    )
    grant = st.builds(
        lambda d, r, g: f"{d}#{r}@{g}#member",
        st.sampled_from(["doc:d0", "doc:d1", "doc:d2"]),
        st.sampled_from(["viewer", "editor", "banned"]),
        st.sampled_from(groups),
    )
    size = draw(st.integers(0, 50))
    return draw(st.lists(st.one_of(nest, nest, join, grant), min_size=size // 2, max_size=size))


@SETTINGS
@given(tuples=dense_groups(), native=st.booleans())
def test_engine_matches_oracle_dense_group_cycles(tuples: list[str], native: bool) -> None:
    snap = GraphStore().load(tuples, revision=1)
    compare(Evaluator(COMPILED, native=native), snap, tuples, explain_every=3)
