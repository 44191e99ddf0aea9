"""Helpers for the command-line gRPC clients (`gatehouse check` and friends)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.v1 import decision_pb2_grpc as pb_grpc

DEFAULT_ADDR = "127.0.0.1:50051"


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr",
        default=os.environ.get("GATEHOUSE_ADDR", DEFAULT_ADDR),
        help="server address HOST:PORT or unix:PATH (default: $GATEHOUSE_ADDR or %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="RPC deadline in seconds")
    p.add_argument(
        "--at-least-revision",
        type=int,
        default=0,
        help="answer only from data at this revision or newer",
    )


def stub(channel: grpc.Channel) -> pb_grpc.DecisionServiceStub:
    return pb_grpc.DecisionServiceStub(channel)  # type: ignore[no-untyped-call]


def run_client(
    args: argparse.Namespace, body: Callable[[pb_grpc.DecisionServiceStub, float], None]
) -> int:
    """Open a channel to `args.addr`, run `body`; an RPC error → stderr and exit status 1."""
    try:
        with grpc.insecure_channel(args.addr) as channel:
            body(stub(channel), args.timeout)
    except grpc.RpcError as e:
        code = e.code() if isinstance(e, grpc.Call) else None
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        name = code.name if code is not None else "ERROR"
        print(f"gatehouse: {name}: {details}", file=sys.stderr)
        return 1
    return 0


def wait_serving(
    addr: str, proc: subprocess.Popen[bytes], timeout: float, poll: float = 0.1
) -> float:
    """Poll grpc.health.v1 at `addr` until it says SERVING; return the seconds waited.
    RuntimeError if `proc` (the process serving there) exits first or `timeout` passes."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - t0
            except grpc.RpcError:
                pass
            time.sleep(poll)
    raise RuntimeError(f"server not SERVING after {timeout:.0f} s")
