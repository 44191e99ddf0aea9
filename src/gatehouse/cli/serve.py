"""`gatehouse serve`: run the gRPC decision server over a static schema and tuples file."""

from __future__ import annotations

import argparse
import pathlib
import random
import signal
import sys
import threading
from types import FrameType
from typing import Any

from gatehouse.bundle.activation import activate
from gatehouse.bundle.http import BundlePoller
from gatehouse.bundle.loader import load_bundle
from gatehouse.bundle.signing import Verifier, load_public_key
from gatehouse.engine.state import DecisionState
from gatehouse.server.app import serve
from gatehouse.server.loading import load_static, read_tuples


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser("serve", help="run the gRPC decision server")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--schema", help="schema file (unsigned, no assertions: development)")
    src.add_argument(
        "--bundle", help="policy bundle: directory, .tar.gz, or http(s) URL polled with ETags"
    )
    p.add_argument("--state-dir", default=None, help="where the last good bundle is persisted")
    p.add_argument("--poll-min", type=float, default=10.0, help="min seconds between polls")
    p.add_argument("--poll-max", type=float, default=20.0, help="max seconds between polls")
    p.add_argument("--pubkey", default=None, help="PEM public key: bundle signature required")
    p.add_argument("--key-id", default="gatehouse", help="key id of --pubkey (%(default)s)")
    p.add_argument("--tuples", required=True, help="tuples file: one tuple per line, # comments")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    p.add_argument("--unix", default=None, help="also listen on this unix socket path")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port on 127.0.0.1")
    p.add_argument("--no-reflection", action="store_true", help="disable gRPC server reflection")
    p.add_argument("--cursor-key-file", default=None, help="file with the cursor signing key")
    p.add_argument("--workers", type=int, default=16, help="RPC worker threads")
    p.add_argument(
        "--decision-cache-size", type=int, default=0, help="LRU decision cache entries (0 = off)"
    )
    p.add_argument("--decision-log", default=None, help="JSON-lines decision log: PATH or -")
    p.add_argument(
        "--decision-log-mask", default="", help="comma-separated fields logged as *** (subject,...)"
    )
    p.add_argument("--grace", type=float, default=5.0, help="shutdown drain time in seconds")
    p.set_defaults(handler=run)


def _verifier(pubkey: str | None, key_id: str) -> Verifier | None:
    if not pubkey:
        return None
    with open(pubkey, "rb") as f:
        return Verifier({key_id: load_public_key(f.read())})


def load_bundle_and_tuples(
    state: DecisionState, bundle_path: str, tuples_path: str, pubkey: str | None, key_id: str
) -> None:
    """Verify (when a key is configured), test and activate a bundle, then load the tuples."""
    bundle = load_bundle(bundle_path, _verifier(pubkey, key_id))
    policy = activate(state, bundle)
    state.load_data(list(read_tuples(pathlib.Path(tuples_path))), policy.revision)


def start_bundle_polling(args: argparse.Namespace, state: DecisionState) -> threading.Event:
    """Poll a bundle URL with jittered delays; at start fall back to the last good bundle.

    Until some bundle is active the server stays NOT_SERVING and answers UNAVAILABLE.
    """
    poller = BundlePoller(args.bundle, state, _verifier(args.pubkey, args.key_id), args.state_dir)
    first = poller.poll_once()
    if first.status != "activated":
        print(f"gatehouse: bundle {first.status}: {first.detail}", file=sys.stderr, flush=True)
        restored = poller.restore_last_good()
        print(f"gatehouse: last good bundle {restored.status}: {restored.detail}", file=sys.stderr)
    stop = threading.Event()
    lo, hi = sorted((max(0.1, args.poll_min), max(0.1, args.poll_max)))

    def loop() -> None:
        while not stop.wait(random.uniform(lo, hi)):
            r = poller.poll_once()
            if r.status in ("rejected", "error"):
                print(f"gatehouse: bundle {r.status}: {r.detail}", file=sys.stderr, flush=True)
            elif r.status == "activated":
                print(f"gatehouse: bundle activated {r.detail}", file=sys.stderr, flush=True)

    threading.Thread(target=loop, name="bundle-poller", daemon=True).start()
    return stop


def run(args: argparse.Namespace) -> int:
    state = DecisionState()
    try:
        if args.bundle and args.bundle.startswith(("http://", "https://")):
            start_bundle_polling(args, state)
            state.load_data(list(read_tuples(pathlib.Path(args.tuples))), 1)
        elif args.bundle:
            load_bundle_and_tuples(state, args.bundle, args.tuples, args.pubkey, args.key_id)
        else:
            load_static(state, args.schema, args.tuples)
        key = None
        if args.cursor_key_file:
            with open(args.cursor_key_file, "rb") as f:
                key = f.read().strip()
        handle = serve(
            state,
            listen=args.listen,
            unix=args.unix,
            metrics_port=args.metrics_port,
            reflection_enabled=not args.no_reflection,
            cursor_key=key,
            max_workers=args.workers,
            decision_cache_size=args.decision_cache_size,
            decision_log=args.decision_log,
            decision_log_mask=[m for m in args.decision_log_mask.split(",") if m.strip()],
        )
    except Exception as e:
        print(f"gatehouse serve: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = args.listen.rpartition(":")[0] if args.listen else ""
    where = [f"{host}:{handle.port}" if args.listen else "", args.unix or ""]
    msg = f"gatehouse: serving {' '.join(w for w in where if w)}"
    if handle.metrics_port is not None:
        msg += f", metrics on 127.0.0.1:{handle.metrics_port}"
    print(msg, file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    print("gatehouse: shutting down", file=sys.stderr, flush=True)
    handle.stop(args.grace)
    return 0
