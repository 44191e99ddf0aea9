"""`gatehouse sync`: the sync worker (system of record -> feed for decision servers)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gatehouse.bundle.loader import load_bundle
from gatehouse.bundle.signing import verifier_from_file
from gatehouse.cli._signals import wait_for_termination
from gatehouse.config import ConfigError, Option, prepare_parser, resolve_namespace
from gatehouse.model.compiler import CompiledSchema
from gatehouse.sor.store import SystemOfRecord
from gatehouse.sync.feed import serve_feed
from gatehouse.sync.mapping import TupleMapping, load_mapping, parse_mapping
from gatehouse.sync.worker import SyncWorker


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sync", help="run the sync worker: SoR rows -> tuples -> feed for decision servers"
    )
    p.add_argument("--config", default=None, help="YAML file of settings (keys = option names)")
    # --db and one of --mapping/--bundle are required once the config file and the
    # environment are merged in (see _validate), so argparse does not require them itself.
    p.add_argument("--db", help="SQLAlchemy URL of the system of record")
    p.add_argument("--listen", default="127.0.0.1:50052", help="feed HOST:PORT (%(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mapping", help="mapping YAML (rows -> tuples)")
    src.add_argument(
        "--bundle",
        help="bundle (directory or .tar.gz): its mapping.yaml, and its schema to validate tuples",
    )
    p.add_argument("--pubkey", default=None, help="PEM public key: bundle signature required")
    p.add_argument("--key-id", default="gatehouse", help="key id of --pubkey (%(default)s)")
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
    # Keep last: records every option above for the config file and the environment.
    p.set_defaults(handler=run, config_options=prepare_parser(p))


def _validate(args: argparse.Namespace) -> None:
    if not args.db:
        raise ConfigError("--db is required (or config key db / GATEHOUSE_DB)")
    if bool(args.mapping) == bool(args.bundle):
        raise ConfigError("give exactly one of --mapping or --bundle (or config key / env)")
    if args.pubkey and not args.bundle:
        raise ConfigError("--pubkey verifies a --bundle")
    if args.poll <= 0 or args.reconcile_interval < 0 or args.retain < 1:
        raise ConfigError("--poll must be > 0, --reconcile-interval >= 0, --retain >= 1")


def _mapping(
    args: argparse.Namespace, sor: SystemOfRecord
) -> tuple[TupleMapping, CompiledSchema | None]:
    # Tables are checked against the database itself, so a company's own tables work too.
    if args.mapping:
        return load_mapping(args.mapping, sor.columns), None
    bundle = load_bundle(args.bundle, verifier_from_file(args.pubkey, args.key_id))
    text = bundle.files.get("mapping.yaml")
    if text is None:
        raise ValueError(f"{args.bundle} has no mapping.yaml")
    source = f"{args.bundle}/mapping.yaml"
    return parse_mapping(text.decode("utf-8"), source, sor.columns), bundle.schema


def run(args: argparse.Namespace) -> int:
    options: dict[str, Option] = args.config_options
    try:
        args = resolve_namespace(args, options)
        _validate(args)
    except ConfigError as e:
        print(f"gatehouse sync: {e}", file=sys.stderr)
        return 2
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
