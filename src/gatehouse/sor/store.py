"""`SystemOfRecord`: write relationships and their change log in one transaction.

Change capture must never skip a transaction that commits late. Every write transaction
starts by incrementing the single `sor_meta` row (`UPDATE ... SET revision = revision + 1`).
On PostgreSQL the row lock is held until commit, so the next writer waits and then reads the
committed value: revision order equals commit order, and revisions are gap-free (a rollback
undoes its increment). On SQLite the transaction begins IMMEDIATE, taking the database write
lock, which gives the same order. A reader that first reads `sor_meta.revision` = R and then
reads change_log rows with revision <= R therefore sees every one of them: all were committed
before R was. The price is that writers are serialised (see docs/sync.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from gatehouse.engine.validate import validate_delta
from gatehouse.graph.tuples import Delta, ObjectRef, SubjectRef, Tuple
from gatehouse.model.compiler import CompiledSchema
from gatehouse.sor.tables import change_log, metadata, relationships, sor_meta

_WRITE_OPTION = "gatehouse_sor_write"
_TUPLE_COLS = (
    "resource_type",
    "resource_id",
    "relation",
    "subject_type",
    "subject_id",
    "subject_relation",
)


@dataclass(frozen=True, slots=True)
class Change:
    """The effective changes of one system-of-record transaction."""

    revision: int
    writes: tuple[str, ...]
    deletes: tuple[str, ...]


def tuple_row(t: Tuple) -> dict[str, str]:
    return {
        "resource_type": t.resource.type,
        "resource_id": t.resource.id,
        "relation": t.relation,
        "subject_type": t.subject.type,
        "subject_id": t.subject.id,
        "subject_relation": t.subject.relation or "",
    }


def row_tuple(row: Any) -> Tuple:
    return Tuple(
        ObjectRef(row.resource_type, row.resource_id),
        row.relation,
        SubjectRef(row.subject_type, row.subject_id, row.subject_relation or None),
    )


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


class SystemOfRecord:
    """Relationships and their change log in a SQL database (SQLite or PostgreSQL).

    `schema` (optional) validates writes against a compiled policy so the feed never carries
    a tuple the decision servers would refuse. `db_schema` puts the tables in a PostgreSQL
    schema (namespace) other than the default.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: CompiledSchema | None = None,
        db_schema: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        base = engine if engine is not None else create_engine(url)
        if base.dialect.name == "sqlite":
            _install_sqlite_hooks(base)
        self.engine = (
            base.execution_options(schema_translate_map={None: db_schema}) if db_schema else base
        )
        self.dialect = base.dialect.name
        self.policy_schema = schema

    def close(self) -> None:
        self.engine.dispose()

    # schema -------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables (if missing) and the `sor_meta` row. Idempotent."""
        with self.engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
        with self.engine.begin() as conn:
            if conn.execute(select(sor_meta.c.id)).first() is None:
                conn.execute(insert(sor_meta).values(id=1, revision=0, log_floor=0))

    # writes -------------------------------------------------------------------
    def write(self, writes: Iterable[Tuple | str] = (), deletes: Iterable[Tuple | str] = ()) -> int:
        """Apply deletes then writes in one transaction; return the revision they are visible
        at. Only effective changes are logged; a call that changes nothing allocates no
        revision and returns the current one."""
        delta = Delta.of(writes, deletes)
        if self.policy_schema is not None:
            validate_delta(self.policy_schema, delta)
        wset = list(dict.fromkeys(delta.writes))
        in_writes = set(wset)
        dset = [t for t in dict.fromkeys(delta.deletes) if t not in in_writes]
        now = dt.datetime.now(dt.UTC)
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin() as txn:
                revision = conn.execute(
                    update(sor_meta)
                    .where(sor_meta.c.id == 1)
                    .values(revision=sor_meta.c.revision + 1)
                    .returning(sor_meta.c.revision)
                ).scalar_one()
                log: list[dict[str, Any]] = []
                for t in dset:
                    row = tuple_row(t)
                    where = [relationships.c[k] == v for k, v in row.items()]
                    if conn.execute(delete(relationships).where(*where)).rowcount:
                        log.append({**row, "op": "delete"})
                for t in wset:
                    row = tuple_row(t)
                    if conn.execute(self._insert_ignore(row)).rowcount:
                        log.append({**row, "op": "write"})
                if not log:
                    txn.rollback()
                    return int(revision) - 1
                conn.execute(
                    insert(change_log),
                    [{**r, "revision": revision, "committed_at": now} for r in log],
                )
        return int(revision)

    def _insert_ignore(self, row: dict[str, str]) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(relationships).values(**row).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            return sqlite.insert(relationships).values(**row).on_conflict_do_nothing()
        raise NotImplementedError(f"unsupported database dialect {self.dialect!r}")

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

    def tuples(self) -> tuple[int, list[str]]:
        """(revision, every tuple) read in one transaction."""
        out: list[str] = []
        rev = 0
        for snap_rev, chunk in self.snapshot(chunk_size=10_000):
            rev = snap_rev
            out.extend(chunk)
        return rev, out

    def snapshot(self, chunk_size: int = 1000) -> Iterator[tuple[int, list[str]]]:
        """Every relationship at one revision, in chunks (at least one, maybe empty), all
        read in one repeatable-read transaction."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                revision = int(conn.execute(select(sor_meta.c.revision)).scalar_one())
                result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(
                    select(*[relationships.c[k] for k in _TUPLE_COLS]).order_by(relationships.c.id)
                )
                sent = False
                for part in result.partitions(chunk_size):
                    sent = True
                    yield revision, [str(row_tuple(r)) for r in part]
                if not sent:
                    yield revision, []

    def changes_since(self, after: int, max_revisions: int = 500) -> list[Change]:
        """The transactions with revision in (after, after + max_revisions], oldest first.

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
        out: list[Change] = []
        cur: int | None = None
        writes: list[str] = []
        deletes: list[str] = []
        for r in rows:
            if r.revision != cur:
                if cur is not None:
                    out.append(Change(cur, tuple(writes), tuple(deletes)))
                cur, writes, deletes = int(r.revision), [], []
            (writes if r.op == "write" else deletes).append(str(row_tuple(r)))
        if cur is not None:
            out.append(Change(cur, tuple(writes), tuple(deletes)))
        return out
