"""`SystemOfRecord`: domain rows and their change log, written in one transaction.

Change capture must never skip a transaction that commits late. Every write transaction
starts by incrementing the single `sor_meta` row (`UPDATE ... SET revision = revision + 1`).
On PostgreSQL the row lock is held until commit, so the next writer waits and then reads the
committed value: revision order equals commit order, and revisions are gap-free (a rollback
undoes its increment). On SQLite the transaction begins IMMEDIATE, taking the database write
lock, which gives the same order. A reader that first reads `sor_meta.revision` = R and then
reads change_log rows with revision <= R therefore sees every one of them: all were committed
before R was. The price is that writers are serialised (see docs/sync.md).

On PostgreSQL a committed transaction also sends `NOTIFY gatehouse_sor` so the sync worker
wakes at once instead of at its next poll.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, NoSuchTableError

from gatehouse.graph.tuples import Delta, Tuple
from gatehouse.sor.tables import (
    CAPTURED,
    SECRET_COLUMNS,
    WRITABLE,
    audit_log,
    change_log,
    metadata,
    sor_meta,
)

_WRITE_OPTION = "gatehouse_sor_write"
NOTIFY_CHANNEL = "gatehouse_sor"


class RowError(ValueError):
    """A row that cannot be written: unknown table or column, wrong type, missing or
    duplicate key. Nothing of the transaction is committed."""


@dataclass(frozen=True, slots=True)
class RowChange:
    table: str
    op: str  # insert | update | delete | reconcile
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Transaction:
    """The captured changes of one system-of-record transaction."""

    revision: int
    changes: tuple[RowChange, ...]


def _image(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a row without secrets (datetimes as ISO strings)."""
    out: dict[str, Any] = {}
    for c in table.columns:
        if c.name in SECRET_COLUMNS:
            continue
        v = row.get(c.name)
        out[c.name] = v.isoformat() if isinstance(v, dt.datetime) else v
    return out


def _check_value(table: Table, name: str, value: Any) -> None:
    col = table.columns[name]
    if value is None:
        if not col.nullable:
            raise RowError(f"{table.name}.{name} may not be null")
        return
    if isinstance(col.type, Boolean):
        ok = isinstance(value, bool)
    elif isinstance(col.type, DateTime):
        ok = isinstance(value, dt.datetime)
    elif isinstance(col.type, String):
        ok = isinstance(value, str)
        if ok and col.type.length is not None and len(value) > col.type.length:
            raise RowError(f"{table.name}.{name} is longer than {col.type.length} characters")
    else:
        ok = isinstance(value, int | str) and not isinstance(value, bool)
    if not ok:
        raise RowError(f"{table.name}.{name}: {type(value).__name__} is not a valid value")


def _table(name: str) -> Table:
    t = WRITABLE.get(name)
    if t is None:
        raise RowError(f"unknown table {name!r}")
    return t


def _key_of(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    key: dict[str, Any] = {}
    for c in table.primary_key.columns:
        if c.name not in values:
            raise RowError(f"{table.name}: key column {c.name!r} missing")
        key[c.name] = values[c.name]
    extra = set(values) - set(key)
    if extra:
        raise RowError(f"{table.name}: {sorted(extra)} are not key columns")
    return key


def _where(table: Table, cond: Mapping[str, Any]) -> Any:
    for k in cond:
        if k not in table.columns:
            raise RowError(f"{table.name} has no column {k!r}")
    return and_(True, *[table.c[k] == v for k, v in cond.items()])


class WriteTx:
    """One open write transaction. Every change to a captured table is logged with its
    before and after images at the transaction's revision."""

    def __init__(self, conn: Connection, revision: int, now: dt.datetime) -> None:
        self._conn = conn
        self.revision = revision
        self.now = now
        self._log: list[dict[str, Any]] = []

    @property
    def changed(self) -> bool:
        return bool(self._log)

    def _record(self, table: Table, op: str, old: Any, new: Any) -> None:
        if table.name not in CAPTURED:
            self._log.append({})  # still a change: keep the revision, log nothing
            return
        self._log.append(
            {
                "revision": self.revision,
                "table_name": table.name,
                "op": op,
                "old": None if old is None else json.dumps(_image(table, old), sort_keys=True),
                "new": None if new is None else json.dumps(_image(table, new), sort_keys=True),
                "committed_at": self.now,
            }
        )

    # reads --------------------------------------------------------------------
    def get(self, table_name: str, **key: Any) -> dict[str, Any] | None:
        t = _table(table_name)
        row = self._conn.execute(select(t).where(_where(t, _key_of(t, key)))).mappings().first()
        return dict(row) if row is not None else None

    def select(self, table_name: str, **where: Any) -> list[dict[str, Any]]:
        t = _table(table_name)
        rows = self._conn.execute(select(t).where(_where(t, where))).mappings().all()
        return [dict(r) for r in rows]

    # writes -------------------------------------------------------------------
    def insert(self, table_name: str, **values: Any) -> dict[str, Any]:
        """Insert one row (defaults filled in); a duplicate key is a RowError."""
        t = _table(table_name)
        row = self._full_row(t, values)
        key = {c.name: row[c.name] for c in t.primary_key.columns}
        if self.get(table_name, **key) is not None:
            raise RowError(f"{t.name}: {key} already exists")
        self._conn.execute(insert(t).values(**row))
        self._record(t, "insert", None, row)
        return row

    def insert_many(self, table_name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert many new rows with one batched statement (bulk loads); a duplicate key —
        in the batch or in the table — is a RowError and the transaction rolls back."""
        t = _table(table_name)
        full = [self._full_row(t, r) for r in rows]
        keys = [tuple(r[c.name] for c in t.primary_key.columns) for r in full]
        if len(set(keys)) != len(keys):
            raise RowError(f"{t.name}: the batch holds the same key twice")
        if not full:
            return 0
        try:
            with self._conn.begin_nested():
                self._conn.execute(insert(t), full)
        except IntegrityError as e:
            raise RowError(f"{t.name}: a row of the batch already exists ({e.orig})") from None
        for r in full:
            self._record(t, "insert", None, r)
        return len(full)

    def _full_row(self, t: Table, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` with defaults filled in, checked against the column types."""
        row: dict[str, Any] = {}
        for c in t.columns:
            if c.name in values:
                row[c.name] = values[c.name]
            elif c.default is not None and getattr(c.default, "is_scalar", False):
                row[c.name] = c.default.arg  # type: ignore[attr-defined]
            elif c.autoincrement is True:
                continue
            else:
                row[c.name] = None
        unknown = set(values) - set(t.columns.keys())
        if unknown:
            raise RowError(f"{t.name} has no column(s) {sorted(unknown)}")
        for k, v in row.items():
            _check_value(t, k, v)
        return row

    def update(self, table_name: str, key: Mapping[str, Any], **values: Any) -> dict[str, Any]:
        """Change non-key columns of one existing row; returns the old row."""
        t = _table(table_name)
        k = _key_of(t, key)
        for name, v in values.items():
            if name not in t.columns:
                raise RowError(f"{t.name} has no column {name!r}")
            if name in k:
                raise RowError(f"{t.name}.{name} is part of the key: delete and insert instead")
            _check_value(t, name, v)
        old = self.get(table_name, **k)
        if old is None:
            raise RowError(f"{t.name}: no row {k}")
        new = {**old, **values}
        if new == old:
            return old
        self._conn.execute(update(t).where(_where(t, k)).values(**values))
        self._record(t, "update", old, new)
        return old

    def delete(self, table_name: str, **key: Any) -> dict[str, Any] | None:
        """Delete one row by key; returns it, or None when there was none."""
        t = _table(table_name)
        k = _key_of(t, key)
        old = self.get(table_name, **k)
        if old is None:
            return None
        self._conn.execute(delete(t).where(_where(t, k)))
        self._record(t, "delete", old, None)
        return old

    def delete_where(self, table_name: str, **where: Any) -> list[dict[str, Any]]:
        if not where:
            raise RowError("delete_where needs a condition")
        t = _table(table_name)
        gone = self.select(table_name, **where)
        for row in gone:
            self.delete(table_name, **{c.name: row[c.name] for c in t.primary_key.columns})
        return gone

    def audit(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_id: str,
        before: Any = None,
        after: Any = None,
    ) -> None:
        def enc(v: Any) -> str | None:
            return None if v is None else json.dumps(v, sort_keys=True, default=str)

        self._conn.execute(
            insert(audit_log).values(
                at=self.now,
                actor=actor,
                action=action,
                target_type=target_type,
                target_id=target_id,
                before=enc(before),
                after=enc(after),
                revision=self.revision,
            )
        )
        self._log.append({})

    def _flush(self) -> None:
        rows = [r for r in self._log if r]
        if rows:
            self._conn.execute(insert(change_log), rows)


def _install_sqlite_hooks(engine: Engine) -> None:
    """Own SQLite transactions: pysqlite's implicit BEGIN skips SELECTs, which would break
    the one-snapshot reads; writers BEGIN IMMEDIATE so they serialise on the write lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def row_tuple_str(row: Mapping[str, Any]) -> str:
    """The tuple a `relationships` row holds."""
    rel = row.get("subject_relation") or ""
    return (
        f"{row['resource_type']}:{row['resource_id']}#{row['relation']}"
        f"@{row['subject_type']}:{row['subject_id']}{'#' + rel if rel else ''}"
    )


def tuple_row(t: Tuple) -> dict[str, str]:
    return {
        "resource_type": t.resource.type,
        "resource_id": t.resource.id,
        "relation": t.relation,
        "subject_type": t.subject.type,
        "subject_id": t.subject.id,
        "subject_relation": t.subject.relation or "",
    }


class SystemOfRecord:
    """The reference system of record in a SQL database (SQLite or PostgreSQL).

    `db_schema` puts the tables in a PostgreSQL schema (namespace) other than the default.
    """

    def __init__(
        self, url: str, *, db_schema: str | None = None, engine: Engine | None = None
    ) -> None:
        base = engine if engine is not None else create_engine(url, pool_pre_ping=True)
        if base.dialect.name == "sqlite":
            _install_sqlite_hooks(base)
        self.url = url
        self.engine = (
            base.execution_options(schema_translate_map={None: db_schema}) if db_schema else base
        )
        self.dialect = base.dialect.name
        self.db_schema = db_schema
        self._reflected: dict[str, Table] = {}

    def close(self) -> None:
        self.engine.dispose()

    def table(self, name: str) -> Table:
        """A reference table, or (for a company's own tables) one reflected from the
        database. Raises RowError for a table that does not exist."""
        t = CAPTURED.get(name)
        if t is not None:
            return t
        cached = self._reflected.get(name)
        if cached is not None:
            return cached
        try:
            with self.engine.connect() as conn:
                t = Table(name, MetaData(), schema=self.db_schema, autoload_with=conn)
        except NoSuchTableError:
            raise RowError(f"no table {name!r} in the database") from None
        self._reflected[name] = t
        return t

    def columns(self, name: str) -> list[str] | None:
        """Column names of a table, or None if it does not exist (for mapping checks)."""
        try:
            return list(self.table(name).columns.keys())
        except RowError:
            return None

    # schema -------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables (if missing) and the `sor_meta` row. Idempotent. Production
        databases use the Alembic migrations instead (`gatehouse sor migrate`)."""
        with self.engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
        self.ensure_meta()

    def ensure_meta(self) -> None:
        with self.engine.begin() as conn:
            if conn.execute(select(sor_meta.c.id)).first() is None:
                conn.execute(insert(sor_meta).values(id=1, revision=0, log_floor=0))

    # writes -------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[WriteTx]:
        """One atomic write. `tx.revision` is the revision the changes are visible at once
        the block exits; an exception rolls everything back. A transaction that changes
        nothing allocates no revision (its `revision` is then the current one)."""
        now = dt.datetime.now(dt.UTC)
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin() as txn:
                if self.dialect == "postgresql":
                    # Capture triggers (sor/triggers.py) skip rows this API logs itself.
                    conn.exec_driver_sql("SELECT set_config('gatehouse.origin', 'api', true)")
                revision = int(
                    conn.execute(
                        update(sor_meta)
                        .where(sor_meta.c.id == 1)
                        .values(revision=sor_meta.c.revision + 1)
                        .returning(sor_meta.c.revision)
                    ).scalar_one()
                )
                tx = WriteTx(conn, revision, now)
                yield tx
                if not tx.changed:
                    txn.rollback()
                    tx.revision = revision - 1
                    return
                tx._flush()
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}, '{revision}'")

    def write(self, writes: Iterable[Tuple | str] = (), deletes: Iterable[Tuple | str] = ()) -> int:
        """Change rows of the `relationships` table (plain tuples); deletes apply first.
        Returns the revision."""
        delta = Delta.of(writes, deletes)
        in_writes = set(delta.writes)
        with self.transaction() as tx:
            for t in dict.fromkeys(delta.deletes):
                if t not in in_writes:
                    tx.delete("relationships", **tuple_row(t))
            for t in dict.fromkeys(delta.writes):
                row = tuple_row(t)
                if tx.get("relationships", **row) is None:
                    tx.insert("relationships", **row)
        return tx.revision

    def mark_reconcile(self, note: str) -> int:
        """Commit an empty transaction whose revision carries a reconciliation's repairs."""
        with self.transaction() as tx:
            tx._log.append(
                {
                    "revision": tx.revision,
                    "table_name": "",
                    "op": "reconcile",
                    "old": None,
                    "new": json.dumps({"note": note}),
                    "committed_at": tx.now,
                }
            )
        return tx.revision

    def prune(self, through_revision: int) -> int:
        """Drop change_log rows at or below `through_revision`; watchers older than that get
        a snapshot. Returns the number of rows removed."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                cur = conn.execute(
                    select(sor_meta.c.revision, sor_meta.c.log_floor).with_for_update()
                ).one()
                through = min(through_revision, int(cur.revision))
                if through <= cur.log_floor:
                    return 0
                conn.execute(update(sor_meta).values(log_floor=through))
                n = conn.execute(delete(change_log).where(change_log.c.revision <= through))
                return int(n.rowcount)

    # reads --------------------------------------------------------------------
    def bounds(self) -> tuple[int, int]:
        """(log_floor, revision): the log holds every revision in (log_floor, revision]."""
        with self.engine.connect() as conn:
            row = conn.execute(select(sor_meta.c.log_floor, sor_meta.c.revision)).one()
            conn.rollback()
        return int(row.log_floor), int(row.revision)

    def revision(self) -> int:
        return self.bounds()[1]

    def rows(self, table_name: str, **where: Any) -> list[dict[str, Any]]:
        """The rows of a table (or the audit log) matching `where`; RowError for an unknown
        table."""
        t = audit_log if table_name == audit_log.name else _table(table_name)
        with self.engine.connect() as conn:
            out = [dict(r) for r in conn.execute(select(t).where(_where(t, where))).mappings()]
            conn.rollback()
        return out

    def snapshot(
        self, tables: Iterable[str], chunk_size: int = 5000
    ) -> Iterator[tuple[int, str, list[dict[str, Any]]]]:
        """(revision, table, rows) chunks of every row of `tables`, all read in one
        repeatable-read transaction together with the revision they are current at."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                revision = int(conn.execute(select(sor_meta.c.revision)).scalar_one())
                for name in tables:
                    t = self.table(name)
                    result = conn.execution_options(
                        stream_results=True, yield_per=chunk_size
                    ).execute(select(t))
                    for part in result.mappings().partitions(chunk_size):
                        yield revision, name, [_image(t, dict(r)) for r in part]
                yield revision, "", []

    def changes_since(self, after: int, max_revisions: int = 500) -> list[Transaction]:
        """The transactions with revision in (after, after + max_revisions], oldest first.
        Every revision in that range is present, with its changes or none.

        Reads the committed head first, then the rows up to it: every revision <= head
        committed before head did, so none is missing (see the module docstring)."""
        with self.engine.connect() as conn, conn.begin():
            head = int(conn.execute(select(sor_meta.c.revision)).scalar_one())
            upto = min(head, after + max_revisions)
            if upto <= after:
                return []
            rows = conn.execute(
                select(change_log)
                .where(change_log.c.revision > after, change_log.c.revision <= upto)
                .order_by(change_log.c.revision, change_log.c.id)
            ).all()
        by_rev: dict[int, list[RowChange]] = {r: [] for r in range(after + 1, upto + 1)}
        for r in rows:
            by_rev[int(r.revision)].append(
                RowChange(
                    r.table_name,
                    r.op,
                    None if r.old is None else json.loads(r.old),
                    None if r.new is None else json.loads(r.new),
                )
            )
        return [Transaction(rev, tuple(ch)) for rev, ch in by_rev.items()]
