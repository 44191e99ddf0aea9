"""A company's own table, written by another application with plain SQL, captured by the
PostgreSQL triggers and mapped by the worker: one delta per transaction, in commit order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dbs import make_db
from sqlalchemy import text

from gatehouse.engine.state import DecisionState
from gatehouse.sor.store import SystemOfRecord
from gatehouse.sor.triggers import install_capture
from gatehouse.sync.client import FeedFollower
from gatehouse.sync.feed import serve_feed
from gatehouse.sync.mapping import MappingError, parse_mapping
from gatehouse.sync.worker import SyncWorker

pytestmark = pytest.mark.postgres

MAPPING = """
version: 1
tables:
  app_acl:   # the application's own table, not ours
    - tuple: "doc:{doc_id}#{access}@user:{user_name}"
      when: {access: [viewer, editor], revoked: false}
"""


@pytest.fixture
def sor(tmp_path: Path) -> Iterator[SystemOfRecord]:
    gen = make_db("postgresql", tmp_path)
    db = next(gen)
    s = db.sor()
    with s.engine.begin() as conn:
        conn.execute(text(f'SET LOCAL search_path TO "{db.db_schema}"'))
        conn.execute(
            text(
                "CREATE TABLE app_acl (doc_id text, user_name text, access text, "
                "revoked boolean NOT NULL DEFAULT false, password_hash text, "
                "PRIMARY KEY (doc_id, user_name))"
            )
        )
    yield s
    s.close()
    for _ in gen:
        pass


def sql(sor: SystemOfRecord, *stmts: str) -> None:
    """Another application: plain SQL, one transaction, no gatehouse code."""
    with sor.engine.begin() as conn:
        conn.execute(text(f'SET LOCAL search_path TO "{sor.db_schema}"'))
        for st in stmts:
            conn.execute(text(st))


def test_writes_by_another_application_reach_the_sidecar(sor: SystemOfRecord) -> None:
    assert install_capture(sor, ["app_acl"]) == ["app_acl"]
    install_capture(sor, ["app_acl"])  # idempotent
    sql(sor, "INSERT INTO app_acl VALUES ('d1', 'ann', 'viewer', false, 'secret')")
    mapping = parse_mapping(MAPPING, "test", sor.columns)
    worker = SyncWorker(sor, mapping, poll_interval=5.0, reconcile_interval=0)
    worker.start()
    feed = serve_feed(worker, "127.0.0.1:0")
    f = FeedFollower(DecisionState(), f"127.0.0.1:{feed.port}")
    f.start()
    try:
        assert f.state.wait_for_revision(1, 20) is not None
        assert set(f.state.store.current.tuples()) == {"doc:d1#viewer@user:ann"}
        # Two statements, one transaction: one revision. The 5 s poll is far away, so
        # arriving quickly also shows NOTIFY woke the worker.
        sql(
            sor,
            "INSERT INTO app_acl VALUES ('d2', 'bob', 'editor', false, NULL)",
            "UPDATE app_acl SET revoked = true WHERE doc_id = 'd1'",
        )
        assert sor.revision() == 2
        assert f.state.wait_for_revision(2, 4) is not None
        assert set(f.state.store.current.tuples()) == {"doc:d2#editor@user:bob"}
        sql(sor, "DELETE FROM app_acl WHERE doc_id = 'd2'")
        assert f.state.wait_for_revision(3, 4) is not None
        assert set(f.state.store.current.tuples()) == set()
        # Secrets never reach the change log.
        with sor.engine.connect() as conn:
            logged = conn.execute(text(f'SELECT old, new FROM "{sor.db_schema}".change_log')).all()
        assert logged and all("secret" not in f"{o}{n}" for o, n in logged)
    finally:
        f.stop()
        feed.stop(0.5)
        worker.stop()


def test_api_writes_are_not_logged_twice(sor: SystemOfRecord) -> None:
    sor.create_schema()
    install_capture(sor, ["group_members"])
    with sor.transaction() as tx:
        tx.insert("group_members", group_id="g", member_type="user", member_id="u")
    (txn,) = sor.changes_since(0)
    assert len(txn.changes) == 1
    sql(sor, "INSERT INTO group_members VALUES ('g', 'user', 'v')")  # outside the API
    assert [len(t.changes) for t in sor.changes_since(0)] == [1, 1]


def test_mapping_of_unknown_tables_and_columns_is_refused(sor: SystemOfRecord) -> None:
    with pytest.raises(MappingError, match="unknown table 'nope'"):
        parse_mapping("version: 1\ntables: {nope: []}", "t", sor.columns)
    with pytest.raises(MappingError, match="unknown columns"):
        parse_mapping(
            'version: 1\ntables: {app_acl: [{tuple: "doc:{docid}#viewer@user:{user_name}"}]}',
            "t",
            sor.columns,
        )
    with pytest.raises(ValueError, match="no table"):
        install_capture(sor, ["missing_table"])
