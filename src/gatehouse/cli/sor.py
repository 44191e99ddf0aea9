"""`gatehouse sor`: manage the reference system of record (schema, fixtures)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from gatehouse.sor.fixtures import load_fixture
from gatehouse.sor.migrate import upgrade
from gatehouse.sor.store import SystemOfRecord
from gatehouse.sor.triggers import install_capture
from gatehouse.sync.mapping import load_mapping


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sor", help="reference system of record: migrate, load a bundle fixture"
    )
    sub = p.add_subparsers(dest="sor_cmd", required=True)
    m = sub.add_parser("migrate", help="create or upgrade the tables (Alembic)")
    m.add_argument("--db", required=True, help="SQLAlchemy URL")
    m.set_defaults(handler=run_migrate)
    f = sub.add_parser("load-fixture", help="insert a bundle fixture's rows (one transaction)")
    f.add_argument("--db", required=True, help="SQLAlchemy URL")
    f.add_argument("bundle", help="bundle directory (fixture.yaml and mapping.yaml)")
    f.set_defaults(handler=run_load)
    c = sub.add_parser(
        "capture",
        help="PostgreSQL: install change-capture triggers on tables written outside the API",
    )
    c.add_argument("--db", required=True, help="SQLAlchemy URL (PostgreSQL)")
    c.add_argument("--db-schema", default=None, help="PostgreSQL schema holding the tables")
    c.add_argument("tables", nargs="+", help="tables to capture")
    c.set_defaults(handler=run_capture)


def run_capture(args: argparse.Namespace) -> int:
    sor = SystemOfRecord(args.db, db_schema=args.db_schema)
    try:
        done = install_capture(sor, args.tables)
    except Exception as e:
        print(f"gatehouse sor capture: {e}", file=sys.stderr)
        return 1
    finally:
        sor.close()
    print(f"capturing {', '.join(done)}")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    try:
        upgrade(args.db)
    except Exception as e:
        print(f"gatehouse sor migrate: {e}", file=sys.stderr)
        return 1
    print("gatehouse sor: schema is current")
    return 0


def run_load(args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(f"{args.bundle}/mapping.yaml")
        with open(f"{args.bundle}/fixture.yaml", encoding="utf-8") as fh:
            tuples = yaml.safe_load(fh)["relationships"]
        sor = SystemOfRecord(args.db)
        revision = load_fixture(sor, mapping, tuples)
        sor.close()
    except Exception as e:
        print(f"gatehouse sor load-fixture: {e}", file=sys.stderr)
        return 1
    print(f"loaded at revision {revision}")
    return 0
