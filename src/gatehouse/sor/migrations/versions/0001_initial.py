"""Initial reference system of record.

Revision ID: 0001
Revises:

The first revision creates the tables as `gatehouse.sor.tables` defines them at this
revision; tests/integration/test_sor.py compares a migrated database with the models, so a
model change without a new migration fails the suite.
"""

from __future__ import annotations

from alembic import op

from gatehouse.sor.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
