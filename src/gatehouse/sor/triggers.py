"""Change capture by PostgreSQL triggers, for writes that do not go through
`SystemOfRecord.transaction()`: other applications writing our tables, or a company's own
tables that the sync worker maps.

The trigger does what `transaction()` does: at the transaction's first captured row change it
increments `sor_meta.revision` (the row lock is held until commit, so revision order is
commit order) and keeps the revision in a transaction-local setting; every row change appends
a `change_log` row (before/after as JSON, secrets removed) and the commit wakes the worker by
NOTIFY. Rows written through `transaction()` are skipped (that API logs them itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import text

from gatehouse.sor.store import NOTIFY_CHANNEL, SystemOfRecord
from gatehouse.sor.tables import SECRET_COLUMNS, change_log, sor_meta

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

FUNCTION = "gatehouse_capture"


def _function_sql(schema: str | None) -> str:
    q = f'"{schema}".' if schema else ""
    secrets = " - ".join(f"'{c}'" for c in sorted(SECRET_COLUMNS))
    return f"""
CREATE OR REPLACE FUNCTION {q}{FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    rev bigint;
BEGIN
    IF current_setting('gatehouse.origin', true) = 'api' THEN
        RETURN NULL;
    END IF;
    rev := nullif(current_setting('gatehouse.capture_revision', true), '')::bigint;
    IF rev IS NULL THEN
        UPDATE {q}sor_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO rev;
        PERFORM set_config('gatehouse.capture_revision', rev::text, true);
        PERFORM pg_notify('{NOTIFY_CHANNEL}', rev::text);
    END IF;
    INSERT INTO {q}change_log (revision, table_name, op, old, new, committed_at)
    VALUES (
        rev,
        TG_TABLE_NAME,
        CASE TG_OP WHEN 'INSERT' THEN 'insert' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END,
        CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE (to_jsonb(OLD) - {secrets})::text END,
        CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE (to_jsonb(NEW) - {secrets})::text END,
        now()
    );
    RETURN NULL;
END
$fn$;
"""


def install_capture(sor: SystemOfRecord, tables: Iterable[str]) -> list[str]:
    """Create change_log/sor_meta if missing and a capture trigger on each table.
    Idempotent. PostgreSQL only. Returns the tables now captured."""
    if sor.dialect != "postgresql":
        raise ValueError("capture triggers need PostgreSQL (SQLite writes go through the API)")
    names = list(dict.fromkeys(tables))
    for n in names:
        if not _NAME.match(n):
            raise ValueError(f"not a plain table name: {n!r}")
        sor.table(n)  # raises for a missing table
    schema = sor.db_schema
    q = f'"{schema}".' if schema else ""
    with sor.engine.begin() as conn:
        change_log.metadata.create_all(conn, tables=[change_log, sor_meta], checkfirst=True)
    sor.ensure_meta()
    with sor.engine.begin() as conn:
        conn.execute(text(_function_sql(schema)))
        for n in names:
            trig = f"gatehouse_capture_{n}"[:63]
            conn.execute(text(f'DROP TRIGGER IF EXISTS "{trig}" ON {q}"{n}"'))
            conn.execute(
                text(
                    f'CREATE TRIGGER "{trig}" AFTER INSERT OR UPDATE OR DELETE ON {q}"{n}" '
                    f"FOR EACH ROW EXECUTE FUNCTION {q}{FUNCTION}()"
                )
            )
    return names
