"""Shared fixtures: every system-of-record test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dbs import BACKENDS, Db, make_db

from gatehouse.sor.store import SystemOfRecord


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A fresh database: a SQLite file, or a private schema in the PostgreSQL service."""
    yield from make_db(request.param, tmp_path)


@pytest.fixture
def sor(db: Db) -> Iterator[SystemOfRecord]:
    """The reference system of record, with its tables, in `db`."""
    s = db.sor()
    s.create_schema()
    yield s
    s.close()
