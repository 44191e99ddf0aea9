"""`gatehouse demo`: the whole topology on one machine, on a seed scenario.

A SQLite system of record holding the scenario's fixture as domain rows, a `gatehouse sync`
worker process mapping it to tuples, and a `gatehouse serve` process following the worker and
enforcing the scenario's bundle (its assertions run before activation). It prints the
addresses and commands to try, and stops both processes on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from gatehouse.admin.config import load_config
from gatehouse.admin.seed import complete
from gatehouse.bundle.loader import load_bundle
from gatehouse.server.client import wait_serving
from gatehouse.sor.fixtures import load_fixture
from gatehouse.sor.store import SystemOfRecord

# The seed bundles: the source tree's, or where an installed image put them.
DEFAULT_BUNDLES = pathlib.Path(
    os.environ.get("GATEHOUSE_BUNDLES") or pathlib.Path(__file__).resolve().parents[3] / "bundles"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run the SoR, sync worker and decision server on a seed scenario"
    )
    p.add_argument("--scenario", default="ontra", help="bundle name under bundles/ (%(default)s)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default: a free one)")
    p.add_argument("--metrics-port", type=int, default=0, help="metrics port (default: free)")
    p.add_argument("--data-dir", default=None, help="working directory (default: a temp dir)")
    p.add_argument("--bundles", default=str(DEFAULT_BUNDLES), help="folder of seed bundles")
    p.add_argument(
        "--once", action="store_true", help="run the example commands, then stop (for tests)"
    )
    p.set_defaults(handler=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _examples(bundle: pathlib.Path, addr: str) -> list[list[str]]:
    cmds: list[list[str]] = []
    scenario = bundle / "tests" / "scenario.yaml"
    data = yaml.safe_load(scenario.read_text(encoding="utf-8")) if scenario.exists() else {}
    base = ["gatehouse"]
    for subject, perm, resource, _expected in (data.get("checks") or [])[:3]:
        cmds.append([*base, "check", "--addr", addr, subject, perm, resource])
    for item in (data.get("lists") or [])[:1]:
        cmds.append(
            [
                *base,
                "list-allowed",
                "--addr",
                addr,
                item["subject"],
                item["permission"],
                item["resource_type"],
            ]
        )
    for subject, perm, resource, _expected in (data.get("checks") or [])[:1]:
        cmds.append([*base, "explain", "--addr", addr, subject, perm, resource])
    return cmds


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gatehouse.cli.main", *args])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prepare_sor(url: str, bundle: pathlib.Path) -> int:
    """Create the SQLite system of record, load the scenario's fixture as domain rows and
    complete the rows the admin workflows need (`gatehouse admin init --fixture`); once: a
    data dir that already holds them is reused. Returns the SoR revision."""
    sor = SystemOfRecord(url)
    try:
        sor.create_schema()
        if sor.revision() == 0:
            config = load_config(load_bundle(str(bundle)))
            fixture = yaml.safe_load((bundle / "fixture.yaml").read_text(encoding="utf-8"))
            load_fixture(sor, config.mapping, fixture.get("relationships") or [])
            complete(sor, config, actor="gatehouse-demo")
        return sor.revision()
    finally:
        sor.close()


def run(args: argparse.Namespace) -> int:
    bundle = pathlib.Path(args.bundles) / args.scenario
    if not (bundle / "schema.zed").exists():
        names = sorted(p.name for p in pathlib.Path(args.bundles).glob("*/schema.zed"))
        print(
            f"gatehouse: no scenario {args.scenario!r} (have: {', '.join(names)})", file=sys.stderr
        )
        return 2
    work = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="gatehouse-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{(work / 'sor.db').resolve()}"
    try:
        revision = prepare_sor(db_url, bundle)
    except Exception as e:
        print(f"gatehouse: demo failed: cannot prepare the system of record: {e}", file=sys.stderr)
        return 1
    port = args.port or free_port()
    mport = args.metrics_port or free_port()
    feed_port, feed_mport = free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    feed = f"127.0.0.1:{feed_port}"
    procs: list[subprocess.Popen[bytes]] = []
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        # The real topology: the sync worker and the decision server are separate processes.
        procs.append(
            _spawn(
                [
                    "sync",
                    "--db",
                    db_url,
                    "--bundle",
                    str(bundle),
                    "--listen",
                    feed,
                    "--metrics-port",
                    str(feed_mport),
                    "--poll",
                    "0.2",
                ]
            )
        )
        wait_serving(feed, procs[0], timeout=60)
        procs.append(
            _spawn(
                [
                    "serve",
                    "--bundle",
                    str(bundle),
                    "--feed",
                    feed,
                    "--data-dir",
                    str(work / "server-data"),
                    "--listen",
                    addr,
                    "--metrics-port",
                    str(mport),
                ]
            )
        )
        wait_serving(addr, procs[1], timeout=60)
        examples = _examples(bundle, addr)
        print(f"gatehouse demo: scenario {args.scenario} is SERVING (data revision {revision})")
        print(f"  gRPC address : {addr}")
        print(f"  metrics      : http://127.0.0.1:{mport}/metrics (server)")
        print(f"                 http://127.0.0.1:{feed_mport}/metrics (sync worker)")
        print(f"  database     : {db_url}")
        print("  admin        : (paste these, then: gatehouse admin --help)")
        print(f"    export GATEHOUSE_DB={shlex.quote(db_url)}")
        print(f"    export GATEHOUSE_BUNDLE={shlex.quote(str(bundle))}")
        print(f"  data dir     : {work}")
        print("  try:")
        for c in examples:
            print("    " + shlex.join(c))
        sys.stdout.flush()
        if args.once:
            for c in examples:
                out = subprocess.run(
                    [sys.executable, "-m", "gatehouse.cli.main", *c[1:]],
                    capture_output=True,
                    text=True,
                )
                print(f"$ {shlex.join(c)}\n{out.stdout}{out.stderr}", end="")
                if out.returncode != 0:
                    return 1
            return 0
        print("  Ctrl-C stops the demo and every process it started.")
        while not stop and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        return 0 if stop else 1
    except RuntimeError as e:
        print(f"gatehouse: demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            _stop(p)
