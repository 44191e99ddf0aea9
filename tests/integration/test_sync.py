"""The sync worker and the feed: SoR transactions reach a decision state as one delta each,
at the SoR's revision, through a real gRPC feed server; bad rows grant nothing; drift is
repaired; the follower persists and resumes. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import grpc
import pytest
from sqlalchemy import insert

from gatehouse.engine.state import DecisionState
from gatehouse.files import atomic_write
from gatehouse.graph.store import GraphStore
from gatehouse.graph.tuples import ObjectRef, SubjectRef
from gatehouse.model.compiler import compile_schema
from gatehouse.sor.store import SystemOfRecord, WriteTx
from gatehouse.sor.tables import group_members
from gatehouse.sync.client import DATA_FILE, FeedFollower, snapshot_revision, write_snapshot
from gatehouse.sync.feed import FeedHandle, serve_feed
from gatehouse.sync.mapping import parse_mapping
from gatehouse.sync.worker import SyncWorker
from gatehouse.v1 import feed_pb2, feed_pb2_grpc

MAPPING = parse_mapping(
    """
version: 1
tables:
  resources:
    - tuple: "doc:{id}#parent@folder:{parent_id}"
      when: {type: doc, parent_id: {not: ""}}
  group_members:
    - tuple: "group:{group_id}#member@{member}"
      vars:
        member:
          by: member_type
          cases: {user: "user:{member_id}", group: "group:{member_id}#member"}
  access_grants:
    - tuple: "doc:{resource_id}#{level}@{subject}"
      when: {resource_type: doc, resource_id: {not: ""}}
      vars:
        subject:
          by: subject_type
          cases: {user: "user:{subject_id}", group: "group:{subject_id}#member"}
    # A second rule producing a tuple the first may also produce: counted, not duplicated.
    - tuple: "doc:{resource_id}#viewer@{subject}"
      when: {resource_type: doc, level: editor}
      vars:
        subject:
          by: subject_type
          cases: {user: "user:{subject_id}", group: "group:{subject_id}#member"}
"""
)


@pytest.fixture
def worker(sor: SystemOfRecord) -> Iterator[SyncWorker]:
    w = SyncWorker(sor, MAPPING, poll_interval=0.05, reconcile_interval=0, retain=50)
    w.start()
    assert w.ready.wait(20)
    yield w
    w.stop()


@pytest.fixture
def feed(worker: SyncWorker) -> Iterator[FeedHandle]:
    h = serve_feed(worker, "127.0.0.1:0")
    yield h
    h.stop(0.5)


TEST_SCHEMA = compile_schema(
    """
definition user {}
definition folder {}
definition group { relation member: user | group#member }
definition doc {
    relation parent: folder
    relation viewer: user | group#member
    relation editor: user | group#member
}
"""
)


def policy_state(digest: str = "test-schema") -> DecisionState:
    """A sidecar's state with the test policy active (persisted data is tagged with it)."""
    st = DecisionState()
    st.activate_policy(TEST_SCHEMA, "test", 1, digest)
    return st


def follower(feed: FeedHandle, data_dir: str | None = None) -> FeedFollower:
    f = FeedFollower(policy_state(), f"127.0.0.1:{feed.port}", data_dir=data_dir)
    f.start()
    return f


def tuples_at(f: FeedFollower, revision: int) -> set[str]:
    assert f.state.wait_for_revision(revision, 20) is not None, f"never reached {revision}"
    snap = f.state.store.current
    return set(snap.tuples())


def grant(sor: SystemOfRecord, subject: str, level: str, doc: str) -> int:
    kind, _, sid = subject.partition(":")
    with sor.transaction() as tx:
        tx.insert(
            "access_grants",
            subject_type=kind,
            subject_id=sid,
            level=level,
            resource_type="doc",
            resource_id=doc,
        )
    return tx.revision


def ungrant(sor: SystemOfRecord, subject: str, level: str, resource: str) -> int:
    kind, _, sid = subject.partition(":")
    rtype, _, rid = resource.partition(":")
    with sor.transaction() as tx:
        gone = tx.delete(
            "access_grants",
            subject_type=kind,
            subject_id=sid,
            level=level,
            resource_type=rtype,
            resource_id=rid,
            tenant_id="",
        )
    assert gone is not None
    return tx.revision


def test_each_transaction_arrives_as_one_delta_at_its_revision(
    sor: SystemOfRecord, feed: FeedHandle
) -> None:
    r0 = grant(sor, "user:ann", "viewer", "d1")  # before the watcher connects: snapshot
    f = follower(feed)
    try:
        assert tuples_at(f, r0) == {"doc:d1#viewer@user:ann"}
        with sor.transaction() as tx:
            tx.insert("group_members", group_id="eng", member_type="user", member_id="bob")
            tx.insert(
                "access_grants",
                subject_type="group",
                subject_id="eng",
                level="editor",
                resource_type="doc",
                resource_id="d2",
            )
        r1 = tx.revision
        assert tuples_at(f, r1) == {
            "doc:d1#viewer@user:ann",
            "group:eng#member@user:bob",
            "doc:d2#editor@group:eng#member",
            "doc:d2#viewer@group:eng#member",
        }
        assert f.state.store.current.revision == r1  # the SoR's revision, not a local count
        with sor.transaction() as tx:
            tx.delete("group_members", group_id="eng", member_type="user", member_id="bob")
        assert "group:eng#member@user:bob" not in tuples_at(f, tx.revision)
        assert f.stats.snapshots == 1 and f.stats.deltas >= 2
    finally:
        f.stop()


def test_two_rows_producing_one_tuple_keep_it_until_both_are_gone(
    sor: SystemOfRecord, feed: FeedHandle
) -> None:
    f = follower(feed)
    try:
        grant(sor, "user:ann", "viewer", "d1")
        r = grant(sor, "user:ann", "editor", "d1")  # also maps to doc:d1#viewer@user:ann
        assert "doc:d1#viewer@user:ann" in tuples_at(f, r)
        rev = ungrant(sor, "user:ann", "viewer", "doc:d1")
        assert tuples_at(f, rev) == {"doc:d1#viewer@user:ann", "doc:d1#editor@user:ann"}
    finally:
        f.stop()


def test_a_row_that_maps_to_a_bad_tuple_grants_nothing(
    sor: SystemOfRecord, worker: SyncWorker, feed: FeedHandle
) -> None:
    f = follower(feed)
    try:
        with sor.transaction() as tx:
            tx.insert("resources", type="doc", id="d1", parent_type="folder", parent_id="f1")
        assert tuples_at(f, tx.revision) == {"doc:d1#parent@folder:f1"}
        with sor.transaction() as tx:
            # An update that makes the row unmappable: its old tuple goes, nothing new comes.
            tx.update("resources", {"type": "doc", "id": "d1"}, parent_id="no such id!")
            tx.insert("group_members", group_id="eng", member_type="robot", member_id="r2")
            tx.insert("group_members", group_id="eng", member_type="user", member_id="ok")
        assert tuples_at(f, tx.revision) == {"group:eng#member@user:ok"}
        assert worker.metrics.rejected._value.get() == 2
    finally:
        f.stop()


def test_reconciliation_repairs_writes_the_change_log_missed(
    sor: SystemOfRecord, worker: SyncWorker, feed: FeedHandle
) -> None:
    f = follower(feed)
    try:
        r = grant(sor, "user:ann", "viewer", "d1")
        tuples_at(f, r)
        # Another application writes straight into the table: no change_log row.
        with sor.engine.begin() as conn:
            conn.execute(
                insert(group_members).values(group_id="ops", member_type="user", member_id="eve")
            )
        worker.stop()  # run reconciliation on this thread instead of the tail thread
        worker._stop.clear()
        repaired = worker.reconcile()
        assert repaired == 1
        assert worker.metrics.repairs._value.get() == 1
        assert "group:ops#member@user:eve" in tuples_at(f, worker.revision)
        assert worker.reconcile() == 0  # nothing left to repair
    finally:
        f.stop()


def test_a_watcher_behind_the_retained_ring_gets_a_snapshot(
    sor: SystemOfRecord, worker: SyncWorker, feed: FeedHandle
) -> None:
    r = 0
    for i in range(80):  # more transactions than the ring (50) keeps
        r = grant(sor, "user:ann", "viewer", f"d{i}")
    worker.deltas_after(r - 1, timeout=20)
    assert worker.revision == r
    assert worker.deltas_after(1, timeout=0) is None
    with grpc.insecure_channel(f"127.0.0.1:{feed.port}") as ch:
        stub = feed_pb2_grpc.FeedServiceStub(ch)  # type: ignore[no-untyped-call]
        stream = stub.Watch(feed_pb2.WatchRequest(from_revision=1), timeout=20)
        first = next(iter(stream))
        assert first.WhichOneof("kind") == "snapshot"
        stream.cancel()


def test_a_watcher_ahead_of_the_sor_is_refused(feed: FeedHandle) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{feed.port}") as ch:
        stub = feed_pb2_grpc.FeedServiceStub(ch)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Watch(feed_pb2.WatchRequest(from_revision=10**9), timeout=30))
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_follower_persists_and_resumes_from_its_revision(
    sor: SystemOfRecord, feed: FeedHandle, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    f = follower(feed, data)
    r = grant(sor, "user:ann", "viewer", "d1")
    tuples_at(f, r)
    f.stop()
    assert snapshot_revision(os.path.join(data, DATA_FILE)) == r
    r2 = grant(sor, "user:bob", "viewer", "d2")
    g = follower(feed, data)
    try:
        assert tuples_at(g, r2) == {"doc:d1#viewer@user:ann", "doc:d2#viewer@user:bob"}
        # It resumed with deltas from its persisted revision, not a second snapshot.
        assert g.stats.snapshots == 0 and g.stats.deltas >= 1
    finally:
        g.stop()


def _store_at(revision: int, tuples: list[str]) -> GraphStore:
    store = GraphStore()
    store.load(tuples, revision)
    return store


def test_a_persisted_snapshot_restores_only_when_intact_and_under_its_policy(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / DATA_FILE)
    write_snapshot(path, _store_at(7, ["doc:d#viewer@user:a"]).current, "test-schema")
    ok = FeedFollower(policy_state(), "127.0.0.1:1", data_dir=str(tmp_path))
    assert ok.restore() == 7
    assert set(ok.state.store.current.tuples()) == {"doc:d#viewer@user:a"}
    # Written under another policy: its tuples were never validated against this one.
    other = FeedFollower(policy_state("another"), "127.0.0.1:1", data_dir=str(tmp_path))
    assert other.restore() is None and not other.state.data_ready
    # One flipped byte: refused whole.
    raw = bytearray(Path(path).read_bytes())
    raw[len(raw) // 2] ^= 0x40
    Path(path).write_bytes(bytes(raw))
    bad = FeedFollower(policy_state(), "127.0.0.1:1", data_dir=str(tmp_path))
    assert bad.restore() is None and not bad.state.data_ready


def test_worker_metrics_are_served(sor: SystemOfRecord, worker: SyncWorker) -> None:
    import urllib.request

    h = serve_feed(worker, "127.0.0.1:0", metrics_port=0)
    f = follower(h)
    try:
        r = grant(sor, "user:ann", "viewer", "d1")
        tuples_at(f, r)
        assert h.metrics_port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics") as resp:
            body = resp.read().decode()
        values = {
            line.split()[0]: float(line.split()[1])
            for line in body.splitlines()
            if line.startswith("gatehouse_sync_")
        }
        assert values["gatehouse_sync_connected_sidecars"] == 1
        assert values["gatehouse_sync_revision"] == r
        assert (
            values["gatehouse_sync_deltas_sent_total"]
            + values["gatehouse_sync_snapshots_sent_total"]
            >= 1
        )
        for name in ("gatehouse_sync_lag_seconds", "gatehouse_sync_reconcile_repairs_total"):
            assert name in values
        assert "subject" not in body and "ann" not in body  # no ids in labels
    finally:
        f.stop()
        h.stop(0.5)


ONTRA = Path(__file__).resolve().parents[2] / "bundles" / "ontra"


@pytest.fixture
def ontra(sor: SystemOfRecord) -> Iterator[tuple[SyncWorker, FeedHandle]]:
    """A worker with the ontra bundle's mapping and its feed."""
    from gatehouse.sync.mapping import load_mapping

    w = SyncWorker(
        sor, load_mapping(str(ONTRA / "mapping.yaml")), poll_interval=0.05, reconcile_interval=0
    )
    w.start()
    h = serve_feed(w, "127.0.0.1:0")
    yield w, h
    h.stop(0.5)
    w.stop()


def _ontra_follower(feed: FeedHandle) -> FeedFollower:
    from gatehouse.bundle.activation import activate
    from gatehouse.bundle.loader import load_bundle

    state = DecisionState()
    activate(state, load_bundle(str(ONTRA)))
    f = FeedFollower(state, f"127.0.0.1:{feed.port}")
    f.start()
    return f


def _member(tx: WriteTx, group: str, user: str, add: bool) -> None:
    key = {"group_id": group, "member_type": "user", "member_id": user}
    if add:
        tx.insert("group_members", **key)
    else:
        tx.delete("group_members", **key)


def test_a_move_between_groups_is_never_seen_half_applied(
    sor: SystemOfRecord, ontra: tuple[SyncWorker, FeedHandle]
) -> None:
    """RELIABILITY T15: U moves between G1 and G2 in one SQL transaction; probes taken at
    one revision always see exactly one of r1 (via G1) and r2 (via G2)."""
    with sor.transaction() as tx:
        for fund, group in (("r1", "g1"), ("r2", "g2")):
            tx.insert(
                "access_grants",
                subject_type="group",
                subject_id=group,
                level="viewer",
                resource_type="fund",
                resource_id=fund,
            )
        _member(tx, "g1", "u", True)
    f = _ontra_follower(ontra[1])
    stop = threading.Event()
    bad: list[tuple[int, bool, bool]] = []
    probes = [0]

    def probe() -> None:
        u = SubjectRef("user", "u")
        while not stop.is_set():
            view = f.state.view()
            ev = view.policy.evaluator
            a = ev.check(view.snapshot, u, "read", ObjectRef("fund", "r1")).allowed
            b = ev.check(view.snapshot, u, "read", ObjectRef("fund", "r2")).allowed
            probes[0] += 1
            if a == b:
                bad.append((view.snapshot.revision, a, b))

    try:
        assert f.state.wait_for_revision(tx.revision, 20) is not None
        threads = [threading.Thread(target=probe) for _ in range(2)]
        for t in threads:
            t.start()
        where = "g1"
        for _ in range(60):
            to = "g2" if where == "g1" else "g1"
            with sor.transaction() as tx:
                _member(tx, where, "u", False)
                _member(tx, to, "u", True)
            where = to
        assert f.state.wait_for_revision(tx.revision, 20) is not None
        stop.set()
        for t in threads:
            t.join()
        assert bad == [] and probes[0] > 100
    finally:
        stop.set()
        f.stop()


def test_at_least_revision_is_never_answered_from_older_data(
    sor: SystemOfRecord, ontra: tuple[SyncWorker, FeedHandle]
) -> None:
    """RELIABILITY T17 (new enemy): revoke in SQL, get revision R; with the worker paused a
    request for R fails (never a stale answer); once the worker runs, it is answered at R."""
    import grpc as _grpc

    from gatehouse.server.app import serve
    from gatehouse.server.client import stub
    from gatehouse.v1 import decision_pb2 as pb

    with sor.transaction() as tx:
        tx.insert(
            "access_grants",
            subject_type="user",
            subject_id="eve",
            level="viewer",
            resource_type="fund",
            resource_id="f1",
        )
    worker, feed = ontra
    f = _ontra_follower(feed)
    server = serve(f.state, listen="127.0.0.1:0")
    try:
        assert f.state.wait_for_revision(tx.revision, 20) is not None
        worker.stop()  # paused: nothing new reaches the sidecar
        revoked_at = ungrant(sor, "user:eve", "viewer", "fund:f1")
        req = pb.CheckRequest(
            subject="user:eve", permission="read", resource="fund:f1", at_least_revision=revoked_at
        )
        with _grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            s = stub(ch)
            with pytest.raises(_grpc.RpcError):
                s.Check(req, timeout=1.0)
            # Without the requirement, the old (stale) grant still answers: the point of R.
            assert s.Check(
                pb.CheckRequest(subject="user:eve", permission="read", resource="fund:f1"),
                timeout=5,
            ).allowed
            worker._stop.clear()
            worker.start()
            resp = s.Check(req, timeout=20)
            assert not resp.allowed and resp.revision >= revoked_at
    finally:
        server.stop(0.5)
        f.stop()


def test_a_failed_persist_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    """RELIABILITY T24 in miniature: the disk fills up half-way through a write."""
    import errno

    path = str(tmp_path / DATA_FILE)
    write_snapshot(path, _store_at(3, ["doc:d#viewer@user:a"]).current, "test-schema")

    def filling_up(f: BinaryIO) -> None:
        f.write(b"GHSNAP1\n half of a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, filling_up)
    assert snapshot_revision(path) == 3
    assert os.listdir(tmp_path) == [DATA_FILE]


def test_after_a_crash_the_journal_restores_the_last_applied_revision(
    sor: SystemOfRecord, feed: FeedHandle, tmp_path: Path
) -> None:
    """RELIABILITY T16/T19: the persisted snapshot is old (persisting is periodic), but the
    deltas applied since were journaled before they were applied; a server restarted after
    a crash, with the worker unreachable, answers at exactly its last revision."""
    data = str(tmp_path / "data")
    f = FeedFollower(policy_state(), f"127.0.0.1:{feed.port}", data_dir=data, persist_every=3600)
    f.start()
    r = grant(sor, "user:ann", "viewer", "d0")
    tuples_at(f, r)
    for i in range(1, 6):
        r = grant(sor, "user:ann", "viewer", f"d{i}")
    before = tuples_at(f, r)
    # "Crash": stop the threads without the final persist a clean stop does.
    f._stop.set()
    f._call.cancel()
    for t in f._threads:
        t.join(5)
    snap_rev = snapshot_revision(os.path.join(data, DATA_FILE))
    assert snap_rev is not None and snap_rev < r  # the snapshot alone would go back in time
    g = FeedFollower(policy_state(), "127.0.0.1:1", data_dir=data)  # nobody listens there
    assert g.restore() == r
    assert set(g.state.store.current.tuples()) == before


def test_a_torn_journal_tail_is_cut_off(tmp_path: Path) -> None:
    from gatehouse.sync.client import Journal

    j = Journal(str(tmp_path / "j"))
    j.append(5, ["doc:a#viewer@user:x"], [])
    j.append(6, [], ["doc:a#viewer@user:x"])
    with open(j.path, "a", encoding="utf-8") as fh:
        fh.write('0badc0de {"r":7,"w":[')  # a crash in the middle of a write
    assert [e[0] for e in Journal.read(j.path)] == [5, 6]
    assert [e[0] for e in Journal(j.path).load()] == [5, 6]
    assert [e[0] for e in Journal.read(j.path)] == [5, 6]
    j2 = Journal(j.path)
    j2.load()
    j2.truncate_through(5)
    assert [e[0] for e in Journal.read(j.path)] == [6]


@pytest.mark.slow
def test_a_huge_transaction_arrives_as_one_delta(sor: SystemOfRecord, feed: FeedHandle) -> None:
    """One SoR transaction is one delta however big (all or nothing): 120,000 rows make a
    message beyond gRPC's default 4 MiB limit."""
    f = follower(feed)
    try:
        r = grant(sor, "user:ann", "viewer", "d0")
        tuples_at(f, r)
        with sor.transaction() as tx:
            tx.insert_many(
                "group_members",
                (
                    {"group_id": "everyone", "member_type": "user", "member_id": f"u{i:06d}"}
                    for i in range(120_000)
                ),
            )
        got = tuples_at(f, tx.revision)
        assert len(got) == 120_001
        assert f.stats.rejected == 0 and f.state.store.current.revision == tx.revision
    finally:
        f.stop()


def test_reconciliation_runs_beside_the_tail_and_keeps_exact_counts(
    sor: SystemOfRecord,
) -> None:
    w = SyncWorker(sor, MAPPING, poll_interval=0.05, reconcile_interval=0.3)
    w.start()
    h = serve_feed(w, "127.0.0.1:0")
    f = follower(h)
    try:
        r = grant(sor, "user:ann", "viewer", "d1")
        tuples_at(f, r)
        with sor.engine.begin() as conn:  # drift: another application, no change log
            conn.execute(
                insert(group_members).values(group_id="ops", member_type="user", member_id="eve")
            )
        # Changes keep flowing while the reconciler works.
        for i in range(2, 6):
            r = grant(sor, "user:ann", "viewer", f"d{i}")
        deadline = time.monotonic() + 20
        while "group:ops#member@user:eve" not in set(f.state.store.current.tuples()):
            assert time.monotonic() < deadline, "drift never repaired"
            time.sleep(0.05)
        assert w.metrics.repairs._value.get() == 1
        # The repaired row now has an exact producer count: deleting it (through the API)
        # removes its tuple.
        with sor.transaction() as tx:
            tx.delete("group_members", group_id="ops", member_type="user", member_id="eve")
        assert "group:ops#member@user:eve" not in tuples_at(f, tx.revision)
        assert {f"doc:d{i}#viewer@user:ann" for i in (1, 2, 3, 4, 5)} <= tuples_at(f, r)
    finally:
        f.stop()
        h.stop(0.5)
        w.stop()


def test_tricky_ids_map_the_same_on_both_databases(sor: SystemOfRecord) -> None:
    """RELIABILITY T07 in the sync path: ids that differ only by case stay distinct; a
    trailing space or a non-ASCII (NFC/NFD) id is refused (counted), never normalised into
    somebody else's id."""
    w = SyncWorker(sor, MAPPING, reconcile_interval=0)
    ids = ["Ann", "ann", "ann ", "añn", "an\u0303n"]
    with sor.transaction() as tx:
        tx.insert_many(
            "group_members",
            [{"group_id": "g", "member_type": "user", "member_id": i} for i in ids],
        )
    rev, counts = w.projection.read(sor)
    assert rev == tx.revision
    assert set(counts) == {"group:g#member@user:Ann", "group:g#member@user:ann"}
    assert w.projection.rejected == 3
