"""`gatehouse serve`: run the gRPC decision server over a static schema and tuples file."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from gatehouse.engine.state import DecisionState
from gatehouse.server.app import serve
from gatehouse.server.loading import load_static


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser("serve", help="run the gRPC decision server")
    p.add_argument("--schema", required=True, help="schema file")
    p.add_argument("--tuples", required=True, help="tuples file: one tuple per line, # comments")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    p.add_argument("--unix", default=None, help="also listen on this unix socket path")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port on 127.0.0.1")
    p.add_argument("--no-reflection", action="store_true", help="disable gRPC server reflection")
    p.add_argument("--cursor-key-file", default=None, help="file with the cursor signing key")
    p.add_argument("--workers", type=int, default=16, help="RPC worker threads")
    p.add_argument("--grace", type=float, default=5.0, help="shutdown drain time in seconds")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    state = DecisionState()
    try:
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
