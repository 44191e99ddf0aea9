"""`gatehouse sync`: the sync worker (system of record -> feed for decision servers)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gatehouse.bundle.loader import load_bundle
from gatehouse.cli._signals import wait_for_termination
from gatehouse.model.compiler import CompiledSchema
from gatehouse.sor.store import SystemOfRecord
from gatehouse.sync.feed import serve_feed
from gatehouse.sync.mapping import TupleMapping, load_mapping, parse_mapping
from gatehouse.sync.worker import SyncWorker


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sync", help="run the sync worker: SoR rows -> tuples -> feed for decision servers"
    )
    p.add_argument("--db", required=True, help="SQLAlchemy URL of the system of record")
    p.add_argument("--listen", default="127.0.0.1:50052", help="feed HOST:PORT (%(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mapping", help="mapping YAML (rows -> tuples)")
    src.add_argument(
        "--bundle", help="bundle directory: its mapping.yaml, and its schema to validate tuples"
    )
    p.add_argument("--db-schema", default=None, help="PostgreSQL schema holding the tables")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds (%(default)s; 0.0.0.0 in a pod so Prometheus can scrape)",
    )
    p.add_argument("--poll", type=float, default=0.5, help="poll interval in seconds")
    p.add_argument(
        "--reconcile-interval",
        type=float,
        default=300.0,
        help="seconds between full reconciliations (0 = never)",
    )
    p.add_argument("--retain", type=int, default=10_000, help="deltas kept for resuming watchers")
    p.add_argument("--create-schema", action="store_true", help="create missing tables first")
    p.set_defaults(handler=run)


def _mapping(
    args: argparse.Namespace, sor: SystemOfRecord
) -> tuple[TupleMapping, CompiledSchema | None]:
    # Tables are checked against the database itself, so a company's own tables work too.
    if args.mapping:
        return load_mapping(args.mapping, sor.columns), None
    bundle = load_bundle(args.bundle)
    text = bundle.files.get("mapping.yaml")
    if text is None:
        raise ValueError(f"{args.bundle} has no mapping.yaml")
    source = f"{args.bundle}/mapping.yaml"
    return parse_mapping(text.decode("utf-8"), source, sor.columns), bundle.schema


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("GATEHOUSE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        sor = SystemOfRecord(args.db, db_schema=args.db_schema)
        if args.create_schema:
            sor.create_schema()
        mapping, schema = _mapping(args, sor)
        worker = SyncWorker(
            sor,
            mapping,
            schema=schema,
            poll_interval=args.poll,
            reconcile_interval=args.reconcile_interval,
            retain=args.retain,
        )
        worker.start()
        handle = serve_feed(worker, args.listen, args.metrics_port, metrics_host=args.metrics_host)
    except Exception as e:
        print(f"gatehouse sync: {e}", file=sys.stderr)
        return 1
    host = args.listen.rpartition(":")[0]
    msg = f"gatehouse sync: feed on {host}:{handle.port}"
    if handle.metrics_port is not None:
        msg += f", metrics on {args.metrics_host}:{handle.metrics_port}"
    print(msg, file=sys.stderr, flush=True)
    wait_for_termination()
    handle.stop(1.0)
    worker.stop()
    sor.close()
    return 0
