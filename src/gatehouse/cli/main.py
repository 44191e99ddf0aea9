"""The `gatehouse` entry point: discovers one module per verb in this package."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence

# `gatehouse serve`: gRPC's socket I/O on the thread that polls the server's completion queue
# (gatehouse.server.fastpath) rather than on EventEngine threads, so an RPC needs no thread
# hand-off (on one core: ~2x the RPC/s, see docs/operations.md). gRPC reads this once, when it
# is imported, so it is set here, before any verb module imports grpc; a GRPC_EXPERIMENTS
# already in the environment wins. Spawned workers inherit it.
SERVE_GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
if sys.argv[1:2] == ["serve"] and "grpc" not in sys.modules:
    os.environ.setdefault("GRPC_EXPERIMENTS", SERVE_GRPC_EXPERIMENTS)

import gatehouse.cli as _pkg  # noqa: E402

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatehouse", description="Authorization decision server and its tools."
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"gatehouse.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
