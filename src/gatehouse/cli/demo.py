"""`gatehouse demo`: start a decision server on a seed scenario and print commands to try.

Today the demo serves the scenario bundle (its assertions run before activation) with the
bundle's fixture as data, in a real `gatehouse serve` process; the SQLite system of record
and sync worker join it once they exist (issue 5), without changing what the demo prints.
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

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_BUNDLES = pathlib.Path(__file__).resolve().parents[3] / "bundles"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run a decision server on a seed scenario")
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


def _wait_serving(addr: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"server not SERVING after {timeout:.0f} s")


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
    fixture = yaml.safe_load((bundle / "fixture.yaml").read_text(encoding="utf-8"))
    tuples = work / "tuples.txt"
    tuples.write_text("\n".join(fixture.get("relationships") or []) + "\n", encoding="utf-8")
    port = args.port or free_port()
    mport = args.metrics_port or free_port()
    addr = f"127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "gatehouse.cli.main",
        "serve",
        "--bundle",
        str(bundle),
        "--tuples",
        str(tuples),
        "--listen",
        addr,
        "--metrics-port",
        str(mport),
    ]
    proc = subprocess.Popen(cmd)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        _wait_serving(addr, proc, timeout=60)
        examples = _examples(bundle, addr)
        print(f"gatehouse demo: scenario {args.scenario} is SERVING")
        print(f"  gRPC address : {addr}")
        print(f"  metrics      : http://127.0.0.1:{mport}/metrics")
        print(f"  data dir     : {work}")
        print("  try:")
        for c in examples:
            print("    " + shlex.join(c))
        sys.stdout.flush()
        if args.once:
            env = dict(os.environ)
            for c in examples:
                out = subprocess.run(
                    [sys.executable, "-m", "gatehouse.cli.main", *c[1:]],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                print(f"$ {shlex.join(c)}\n{out.stdout}{out.stderr}", end="")
                if out.returncode != 0:
                    return 1
            return 0
        print("  Ctrl-C stops the demo and every process it started.")
        while not stop and proc.poll() is None:
            time.sleep(0.2)
        return 0 if stop else 1
    except RuntimeError as e:
        print(f"gatehouse: demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
