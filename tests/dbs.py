"""Databases for system-of-record tests: a SQLite file, or a private PostgreSQL schema.

The PostgreSQL service (127.0.0.1:5432, trust auth, database `test`) is started by
`scripts/ensure-services.sh` (run by `make test`); its tests carry the `postgres` marker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gatehouse.sor.store import SystemOfRecord

PG_URL = os.environ.get("GATEHOUSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@dataclass
class Db:
    url: str
    db_schema: str | None

    def sor(self) -> SystemOfRecord:
        return SystemOfRecord(self.url, db_schema=self.db_schema)

    def cli_args(self) -> list[str]:
        return ["--db", self.url] + (["--db-schema", self.db_schema] if self.db_schema else [])


def make_db(backend: str, tmp_path: Path) -> Iterator[Db]:
    if backend == "sqlite":
        yield Db(f"sqlite:///{tmp_path / 'sor.db'}", None)
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield Db(PG_URL, name)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()
