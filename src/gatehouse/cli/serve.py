"""`gatehouse serve`: run the gRPC decision server over a static schema and tuples file.

Settings come from flags, `GATEHOUSE_<OPTION>` variables and a `--config` YAML file (in that
order of precedence; see `gatehouse.config`). `--workers N` runs N server processes on one
port (see `gatehouse.cli._supervise`); `--threads` is the RPC thread count of each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import random
import sys
import threading
from typing import Any

from gatehouse.bundle.activation import activate
from gatehouse.bundle.http import BundlePoller
from gatehouse.bundle.loader import load_bundle
from gatehouse.bundle.signing import Verifier, verifier_from_file
from gatehouse.cli._signals import wait_for_termination
from gatehouse.cli._supervise import supervise
from gatehouse.config import ConfigError, Option, prepare_parser, resolve_namespace
from gatehouse.engine.state import DecisionState
from gatehouse.model.compiler import compile_schema
from gatehouse.server.app import serve
from gatehouse.server.loading import load_static, read_tuples
from gatehouse.server.status import Freshness, RejectionLog
from gatehouse.sync.client import FeedFollower


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser("serve", help="run the gRPC decision server")
    p.add_argument("--config", default=None, help="YAML file of settings (keys = option names)")
    # One of --schema/--bundle and --tuples are required after merging the config file and
    # the environment (see _validate), so argparse itself does not require them.
    src = p.add_mutually_exclusive_group()
    src.add_argument("--schema", help="schema file (unsigned, no assertions: development)")
    src.add_argument(
        "--bundle", help="policy bundle: directory, .tar.gz, or http(s) URL polled with ETags"
    )
    p.add_argument("--state-dir", default=None, help="where the last good bundle is persisted")
    p.add_argument("--poll-min", type=float, default=10.0, help="min seconds between polls")
    p.add_argument("--poll-max", type=float, default=20.0, help="max seconds between polls")
    p.add_argument("--pubkey", default=None, help="PEM public key: bundle signature required")
    p.add_argument(
        "--bundle-timeout", type=float, default=10.0, help="bundle download timeout in seconds"
    )
    p.add_argument(
        "--allow-bundle-rollback",
        action="store_true",
        help="activate a bundle older than the active one (an explicit, logged override)",
    )
    p.add_argument("--key-id", default="gatehouse", help="key id of --pubkey (%(default)s)")
    p.add_argument("--tuples", help="tuples file: one tuple per line, # comments (static data)")
    p.add_argument("--feed", default=None, help="sync worker HOST:PORT to follow (live data)")
    p.add_argument(
        "--data-dir", default=None, help="persist the followed data here; resume from it"
    )
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    p.add_argument("--unix", default=None, help="also listen on this unix socket path")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds (%(default)s; the pod IP in Kubernetes so Prometheus can "
        "scrape it)",
    )
    p.add_argument("--no-reflection", action="store_true", help="disable gRPC server reflection")
    p.add_argument("--cursor-key-file", default=None, help="file with the cursor signing key")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing --listen (default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=16,
        help="RPC threads per worker for the methods off the fast path and for checks that wait "
        "for a revision (default %(default)s)",
    )
    p.add_argument(
        "--no-fast-path",
        action="store_true",
        help="serve Check/CheckBatch/Ping on the thread pool too, as every other method "
        "(slower; see docs/operations.md)",
    )
    p.add_argument(
        "--max-data-age",
        type=float,
        default=None,
        help="health NOT_SERVING when the data was last confirmed current longer ago (seconds)",
    )
    p.add_argument(
        "--decision-cache-size", type=int, default=0, help="LRU decision cache entries (0 = off)"
    )
    p.add_argument("--decision-log", default=None, help="JSON-lines decision log: PATH or -")
    p.add_argument(
        "--decision-log-mask", default="", help="comma-separated fields logged as *** (subject,...)"
    )
    p.add_argument("--grace", type=float, default=5.0, help="shutdown drain time in seconds")
    # Keep last: records every option above for the config file and the environment.
    p.set_defaults(handler=run, config_options=prepare_parser(p))


def _verifier(pubkey: str | None, key_id: str) -> Verifier | None:
    return verifier_from_file(pubkey, key_id)


def load_bundle_and_tuples(
    state: DecisionState, bundle_path: str, tuples_path: str, pubkey: str | None, key_id: str
) -> None:
    """Verify (when a key is configured), test and activate a bundle, then load the tuples."""
    bundle = load_bundle(bundle_path, _verifier(pubkey, key_id))
    policy = activate(state, bundle)
    state.load_data(list(read_tuples(pathlib.Path(tuples_path))), policy.revision)


def start_bundle_polling(
    args: argparse.Namespace,
    state: DecisionState,
    policy_freshness: Freshness | None = None,
    rejections: RejectionLog | None = None,
) -> threading.Event:
    """Poll a bundle URL with jittered delays; at start fall back to the last good bundle.

    Until some bundle is active the server stays NOT_SERVING and answers UNAVAILABLE.
    Every rejection (and failed fetch) is logged with its full reason and recorded in
    `rejections`; every successful poll touches `policy_freshness`.
    """

    def on_reject(category: str, detail: str, revision: int) -> None:
        if rejections is not None:
            rejections.record(category, detail, revision)
        rev = f" revision={revision}" if revision else ""
        print(
            f"gatehouse: bundle rejected [reason={category}{rev}]: {detail}; "
            "the active bundle keeps serving",
            file=sys.stderr,
            flush=True,
        )

    poller = BundlePoller(
        args.bundle,
        state,
        _verifier(args.pubkey, args.key_id),
        args.state_dir,
        on_reject=on_reject,
        on_current=policy_freshness.touch if policy_freshness is not None else None,
        timeout=args.bundle_timeout,
        allow_rollback=args.allow_bundle_rollback,
    )
    if args.allow_bundle_rollback:
        print(
            "gatehouse: WARNING: --allow-bundle-rollback: older bundle revisions will be activated",
            file=sys.stderr,
            flush=True,
        )
    first = poller.poll_once()
    if first.status != "activated":
        restored = poller.restore_last_good()
        print(f"gatehouse: last good bundle {restored.status}: {restored.detail}", file=sys.stderr)
    stop = threading.Event()
    lo, hi = sorted((max(0.1, args.poll_min), max(0.1, args.poll_max)))

    def loop() -> None:
        while not stop.wait(random.uniform(lo, hi)):
            r = poller.poll_once()
            if r.status == "activated":
                print(f"gatehouse: bundle activated {r.detail}", file=sys.stderr, flush=True)

    threading.Thread(target=loop, name="bundle-poller", daemon=True).start()
    return stop


def start_feed(
    args: argparse.Namespace,
    state: DecisionState,
    freshness: Freshness,
    policy_freshness: Freshness,
    rejections: RejectionLog,
    index: int,
) -> FeedFollower:
    """Activate the policy, then follow the sync worker (restoring persisted data first).
    The server stays NOT_SERVING until both a policy and a data snapshot are active."""
    if args.bundle and args.bundle.startswith(("http://", "https://")):
        start_bundle_polling(args, state, policy_freshness, rejections)
    elif args.bundle:
        activate(state, load_bundle(args.bundle, _verifier(args.pubkey, args.key_id)))
        policy_freshness.touch()
    else:
        sp = pathlib.Path(args.schema)
        text = sp.read_text(encoding="utf-8")
        schema = compile_schema(text, source=str(sp))
        # The digest identifies the policy the persisted data was validated under.
        digest = hashlib.sha256(text.encode()).hexdigest()
        state.activate_policy(schema, name=sp.stem, revision=1, digest=digest)
        policy_freshness.touch()
    data_dir = args.data_dir
    if data_dir and args.workers > 1:
        data_dir = os.path.join(data_dir, f"worker-{index}")

    def on_reject(reason: str) -> None:
        print(f"gatehouse: feed data refused: {reason}", file=sys.stderr, flush=True)

    follower = FeedFollower(
        state, args.feed, data_dir=data_dir, on_current=freshness.touch, on_reject=on_reject
    )
    follower.start()
    return follower


def _validate(args: argparse.Namespace) -> None:
    """Checks that need the merged settings (flags, environment, config file)."""
    if args.schema and args.bundle:
        raise ConfigError("schema and bundle are mutually exclusive: give one")
    if not args.schema and not args.bundle:
        raise ConfigError(
            "a policy is required: --schema or --bundle (or config key / GATEHOUSE_BUNDLE)"
        )
    if bool(args.tuples) == bool(args.feed):
        raise ConfigError(
            "data: give exactly one of --tuples (static) or --feed (a sync worker); "
            "also as config keys tuples / feed or GATEHOUSE_TUPLES / GATEHOUSE_FEED"
        )
    if args.data_dir and not args.feed:
        raise ConfigError("--data-dir only applies with --feed")
    for name in ("workers", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.max_data_age is not None and args.max_data_age <= 0:
        raise ConfigError(f"--max-data-age must be > 0 seconds (got {args.max_data_age})")
    if args.grace < 0:
        raise ConfigError(f"--grace must not be negative (got {args.grace})")
    if args.workers > 1:
        if args.unix:
            raise ConfigError("--unix cannot be shared by several --workers; use --listen")
        if not args.listen or args.listen.rpartition(":")[2] in ("", "0"):
            raise ConfigError("--workers > 1 needs --listen with a fixed port (not 0)")


def run(args: argparse.Namespace) -> int:
    options: dict[str, Option] = args.config_options
    try:
        args = resolve_namespace(args, options)
        _validate(args)
    except ConfigError as e:
        print(f"gatehouse serve: {e}", file=sys.stderr)
        return 2
    settings = {dest: getattr(args, dest) for dest in options}
    if args.workers == 1:
        return run_worker(settings, 0)
    if not args.cursor_key_file:
        # One key for all workers, so a cursor from one worker is valid on the others.
        settings["cursor_key"] = os.urandom(32).hex()
    return supervise(run_worker, settings, args.workers, args.grace)


def run_worker(settings: dict[str, Any], index: int) -> int:
    """One server process. With several workers, worker `index` serves metrics on
    `--metrics-port` + index and writes its decision log to PATH.index."""
    args = argparse.Namespace(**settings)
    multi = args.workers > 1
    state = DecisionState()
    freshness, policy_freshness, rejections = Freshness(), Freshness(), RejectionLog()
    follower: FeedFollower | None = None
    try:
        if args.feed:
            follower = start_feed(args, state, freshness, policy_freshness, rejections, index)
        elif args.bundle and args.bundle.startswith(("http://", "https://")):
            start_bundle_polling(args, state, policy_freshness, rejections)
            state.load_data(list(read_tuples(pathlib.Path(args.tuples))), 1)
        elif args.bundle:
            load_bundle_and_tuples(state, args.bundle, args.tuples, args.pubkey, args.key_id)
            policy_freshness.touch()
        else:
            load_static(state, args.schema, args.tuples)
            policy_freshness.touch()
        if not args.feed:
            freshness.touch()  # static tuples: confirmed once, at load
        key = None
        if args.cursor_key_file:
            with open(args.cursor_key_file, "rb") as f:
                key = f.read().strip()
        elif settings.get("cursor_key"):
            key = bytes.fromhex(settings["cursor_key"])
        metrics_port = args.metrics_port
        if multi and metrics_port:
            metrics_port += index
        decision_log = args.decision_log
        if multi and decision_log and decision_log != "-":
            decision_log = f"{decision_log}.{index}"
        handle = serve(
            state,
            listen=args.listen,
            unix=args.unix,
            metrics_port=metrics_port,
            metrics_host=args.metrics_host,
            reflection_enabled=not args.no_reflection,
            cursor_key=key,
            max_workers=args.threads,
            decision_cache_size=args.decision_cache_size,
            decision_log=decision_log,
            decision_log_mask=[m for m in args.decision_log_mask.split(",") if m.strip()],
            freshness=freshness,
            policy_freshness=policy_freshness,
            rejections=rejections,
            max_data_age=args.max_data_age,
            so_reuseport=multi,
            fast_path=not args.no_fast_path,
        )
    except Exception as e:
        print(f"gatehouse serve: {e}", file=sys.stderr)
        return 1
    host = args.listen.rpartition(":")[0] if args.listen else ""
    where = [f"{host}:{handle.port}" if args.listen else "", args.unix or ""]
    who = f"worker {index} (pid {os.getpid()}) " if multi else ""
    msg = f"gatehouse: {who}serving {' '.join(w for w in where if w)}"
    if handle.metrics_port is not None:
        msg += f", metrics on {args.metrics_host}:{handle.metrics_port}"
    print(msg, file=sys.stderr, flush=True)
    wait_for_termination()
    print(f"gatehouse: {who}shutting down", file=sys.stderr, flush=True)
    handle.stop(args.grace)
    if follower is not None:
        follower.stop()
    return 0
