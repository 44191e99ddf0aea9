"""SQLAlchemy Core tables of the system of record (SQLite and PostgreSQL, same definitions).

relationships  the current tuples; `subject_relation` is '' for a plain or wildcard subject
change_log     every effective change, stamped with the revision of its transaction
sor_meta       one row: the newest committed revision and the retained-log floor
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

TYPE_LEN = 129  # namespace/type
ID_LEN = 256
REL_LEN = 64

# SQLite only auto-increments INTEGER PRIMARY KEY (rowid), never BIGINT.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


def _tuple_columns() -> list[Column[str]]:
    return [
        Column("resource_type", String(TYPE_LEN), nullable=False),
        Column("resource_id", String(ID_LEN), nullable=False),
        Column("relation", String(REL_LEN), nullable=False),
        Column("subject_type", String(TYPE_LEN), nullable=False),
        Column("subject_id", String(ID_LEN), nullable=False),
        Column("subject_relation", String(REL_LEN), nullable=False, server_default=""),
    ]


relationships = Table(
    "relationships",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    *_tuple_columns(),
    UniqueConstraint(
        "resource_type",
        "resource_id",
        "relation",
        "subject_type",
        "subject_id",
        "subject_relation",
        name="uq_relationships_tuple",
    ),
)

change_log = Table(
    "change_log",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),  # order within a revision
    Column("revision", BigInteger, nullable=False),  # one per transaction, == commit order
    Column("op", String(6), nullable=False),  # 'write' | 'delete'
    *_tuple_columns(),
    Column("committed_at", DateTime(timezone=True), nullable=False),
    Index("ix_change_log_revision", "revision", "id"),
)

sor_meta = Table(
    "sor_meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    # The newest committed revision. Writers increment it first thing in their transaction;
    # the row lock serialises them, so revision order is commit order.
    Column("revision", BigInteger, nullable=False),
    # Revisions <= log_floor may have been pruned from change_log.
    Column("log_floor", BigInteger, nullable=False),
)
