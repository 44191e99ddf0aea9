"""The reference system of record on SQLite and PostgreSQL: atomic writes, change capture
that never skips a late commit, migrations, and fixtures that round-trip through mappings."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from dbs import PG_URL
from sqlalchemy import create_engine, text

from gatehouse.sor.fixtures import load_fixture
from gatehouse.sor.migrate import head, upgrade
from gatehouse.sor.store import RowError, SystemOfRecord
from gatehouse.sor.tables import metadata
from gatehouse.sync.mapping import load_mapping
from gatehouse.sync.worker import SyncWorker

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ["kontomatik", "ontra", "infosum", "importers", "aktek"]


def test_changes_are_logged_per_transaction_with_before_and_after(sor: SystemOfRecord) -> None:
    with sor.transaction() as tx:
        tx.insert("tenants", id="acme", kind="account", name="Acme")
        tx.insert("users", id="ana", email="ana@acme", password_hash="secret-hash")
    r1 = tx.revision
    with sor.transaction() as tx:
        tx.update("users", {"id": "ana"}, first_name="Ana")
        tx.delete("tenants", id="acme")
    r2 = tx.revision
    assert r2 == r1 + 1 == sor.revision()
    txns = sor.changes_since(r1 - 1)
    assert [t.revision for t in txns] == [r1, r2]
    assert [(c.table, c.op) for c in txns[0].changes] == [
        ("tenants", "insert"),
        ("users", "insert"),
    ]
    upd, dele = txns[1].changes
    assert upd.old is not None and upd.new is not None
    assert (upd.old["first_name"], upd.new["first_name"]) == ("", "Ana")
    assert dele.op == "delete" and dele.new is None and dele.old is not None
    # Secrets never reach the log (nor, therefore, the feed).
    assert all("password_hash" not in (c.new or {}) for t in txns for c in t.changes)


def test_failed_transaction_leaves_nothing_and_no_revision(sor: SystemOfRecord) -> None:
    before = sor.revision()
    with pytest.raises(RowError, match="already exists"), sor.transaction() as tx:
        tx.insert("tenants", id="acme", kind="account")
        tx.insert("users", id="u1", email="u1@x")
        tx.insert("tenants", id="acme", kind="account")  # duplicate key: all rolls back
    assert sor.revision() == before
    assert sor.rows("tenants") == [] and sor.rows("users") == []
    assert sor.changes_since(before) == []


@pytest.mark.parametrize(
    ("table", "values", "message"),
    [
        ("nope", {"id": "x"}, "unknown table"),
        ("tenants", {"id": "x", "kind": "org", "colour": "red"}, "no column"),
        ("tenants", {"id": 5, "kind": "org"}, "not a valid value"),
        ("users", {"id": "x"}, "may not be null"),
        ("roles", {"id": "r", "super_admin": "yes"}, "not a valid value"),
    ],
)
def test_bad_rows_are_refused_with_a_clear_error(
    sor: SystemOfRecord, table: str, values: dict[str, object], message: str
) -> None:
    with pytest.raises(RowError, match=message), sor.transaction() as tx:
        tx.insert(table, **values)
    assert sor.revision() == 0


def test_a_transaction_that_changes_nothing_allocates_no_revision(sor: SystemOfRecord) -> None:
    r = sor.write(["doc:a#viewer@user:x"])
    with sor.transaction() as tx:
        assert tx.delete("tenants", id="missing") is None
    assert tx.revision == r == sor.revision()
    assert sor.write(["doc:a#viewer@user:x"]) == r  # already there: no change, no revision


def test_uncaptured_tables_still_get_a_revision_but_no_feed_rows(sor: SystemOfRecord) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    with sor.transaction() as tx:
        tx.insert(
            "invitations",
            token_hash="h",
            email="a@b",
            tenant_id="t",
            created_at=now,
            expires_at=now,
        )
    assert tx.revision == 1
    (txn,) = sor.changes_since(0)
    assert txn.revision == 1 and txn.changes == ()


def test_late_commit_is_never_skipped(sor: SystemOfRecord) -> None:
    """Writers race while a reader tails: every revision is seen once, in order, and a
    transaction that was open while later ones wanted to commit is not jumped over."""
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def tail() -> None:
        cur = 0
        while not stop.is_set() or cur < sor.revision():
            for txn in sor.changes_since(cur):
                if txn.revision != cur + 1:
                    problems.append(f"jumped from {cur} to {txn.revision}")
                if not txn.changes:
                    problems.append(f"revision {txn.revision} has no changes")
                cur = txn.revision
                seen.append(cur)

    def slow_writer() -> None:
        # Holds its transaction open: later writers must wait, not commit around it.
        with sor.transaction() as tx:
            tx.insert("tenants", id="slow", kind="org")
            time.sleep(0.5)

    def writer(k: int) -> None:
        for i in range(25):
            sor.write([f"doc:d{k}_{i}#viewer@user:u{k}"])

    t = threading.Thread(target=tail)
    t.start()
    slow = threading.Thread(target=slow_writer)
    slow.start()
    time.sleep(0.1)
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for w in ws:
        w.start()
    for w in [slow, *ws]:
        w.join()
    stop.set()
    t.join()
    assert problems == []
    assert seen == list(range(1, 77))
    slow_rev = next(
        txn.revision for txn in sor.changes_since(0) if txn.changes[0].table == "tenants"
    )
    assert slow_rev == 1  # it took its revision first, and everything after waited for it


def test_prune_keeps_the_revision_bounds(sor: SystemOfRecord) -> None:
    for i in range(5):
        sor.write([f"doc:d{i}#viewer@user:u"])
    assert sor.prune(3) == 3
    assert sor.bounds() == (3, 5)
    assert [t.revision for t in sor.changes_since(3)] == [4, 5]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_fixture_rows_map_back_to_exactly_the_fixture(sor: SystemOfRecord, bundle: str) -> None:
    mapping = load_mapping(str(ROOT / "bundles" / bundle / "mapping.yaml"))
    tuples = yaml.safe_load((ROOT / "bundles" / bundle / "fixture.yaml").read_text())[
        "relationships"
    ]
    revision = load_fixture(sor, mapping, tuples)
    # Nothing lands in the catch-all table: every tuple comes from a domain row.
    assert sor.rows("relationships") == []
    worker = SyncWorker(sor, mapping, reconcile_interval=0)
    worker._initial()
    rev, got = worker.snapshot()
    assert rev == revision
    assert sorted(got) == sorted(set(tuples))


def test_alembic_migration_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == head()
        assert compare_metadata(ctx, metadata) == []
        assert conn.execute(text("SELECT revision FROM sor_meta")).scalar_one() == 0
    engine.dispose()
    upgrade(url)  # idempotent


@pytest.mark.postgres
def test_alembic_migration_on_postgresql() -> None:
    name = f"gh_mig_{int(time.time() * 1000) % 10**9}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn)
            assert ctx.get_current_revision() == head()
            assert compare_metadata(ctx, metadata) == []
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def test_change_log_images_are_json(sor: SystemOfRecord) -> None:
    with sor.transaction() as tx:
        tx.insert("roles", id="r1", name="Auditor", super_admin=True)
    (txn,) = sor.changes_since(0)
    (ch,) = txn.changes
    assert ch.new is not None and ch.new["super_admin"] is True
    json.dumps(ch.new)


def _gh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_sor_cli_migrates_and_loads_a_fixture(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    r = _gh("sor", "migrate", "--db", url)
    assert r.returncode == 0, r.stderr
    r = _gh("sor", "load-fixture", "--db", url, str(ROOT / "bundles" / "ontra"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loaded at revision 1"
    sor = SystemOfRecord(url)
    assert {x["id"] for x in sor.rows("resources")} == {
        "fund_i",
        "fund_ii",
        "fund_iii",
        "task_7",
        "task_8",
    }
    sor.close()
    # Loading it twice would duplicate keys: refused, nothing changes.
    r = _gh("sor", "load-fixture", "--db", url, str(ROOT / "bundles" / "ontra"))
    assert r.returncode == 1 and "already exists" in r.stderr
    r = _gh("sor", "load-fixture", "--db", url, str(tmp_path / "no-such-bundle"))
    assert r.returncode == 1 and "no-such-bundle" in r.stderr


def test_insert_many_is_one_batch_and_refuses_duplicates(sor: SystemOfRecord) -> None:
    rows = [{"group_id": "g", "member_type": "user", "member_id": f"u{i}"} for i in range(500)]
    with sor.transaction() as tx:
        assert tx.insert_many("group_members", rows) == 500
    (txn,) = sor.changes_since(0)
    assert len(txn.changes) == 500 and {c.op for c in txn.changes} == {"insert"}
    before = sor.revision()
    for bad in ([rows[0]], [rows[-1] | {"member_id": "new"}] * 2):
        with (
            pytest.raises(RowError, match=r"already exists|same key twice"),
            sor.transaction() as tx,
        ):
            tx.insert("tenants", id="t", kind="org")
            tx.insert_many("group_members", bad)
        assert sor.revision() == before and sor.rows("tenants") == []


def test_reading_an_unknown_table_is_an_error(sor: SystemOfRecord) -> None:
    with pytest.raises(RowError, match="unknown table"):
        sor.rows("no_such_table")
    assert sor.rows("audit_log") == []
