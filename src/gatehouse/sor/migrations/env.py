"""Alembic environment: online migrations only, against the URL the caller configured."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gatehouse.sor.tables import metadata

target_metadata = metadata


def run() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
