"""Fallback gRPC load generator for bench_server.py, used only when `h2load` is missing.

Replays one serialized (unframed) protobuf request against one unary method from several
processes, each keeping `inflight` calls outstanding with grpcio futures, for `duration`
seconds. A Python client saturates near 3,000 RPC/s (see /work/shared/PEERS.md), so numbers
from this generator measure the client as much as the server; h2load is preferred.

    python bench/loadgen.py --addr 127.0.0.1:50051 --method /gatehouse.v1.DecisionService/Ping \
        --body req.bin --duration 5 --procs 2 --inflight 8
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import sys
import threading
import time
from typing import Any

import grpc


def _ident(b: bytes) -> bytes:
    return b


def _worker(addr: str, method: str, body: bytes, duration: float, inflight: int, q: Any) -> None:
    lat: list[int] = []
    errors = 0
    done = 0
    lock = threading.Lock()
    sem = threading.Semaphore(inflight)
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)
        call(body, timeout=10.0)  # connect and warm up
        end = time.perf_counter() + duration

        def on_done(fut: grpc.Future[Any], t0: int) -> None:
            nonlocal errors, done
            dt = time.perf_counter_ns() - t0
            with lock:
                if fut.exception() is None:
                    lat.append(dt)
                    done += 1
                else:
                    errors += 1
            sem.release()

        t_start = time.perf_counter()
        while time.perf_counter() < end:
            sem.acquire()
            t0 = time.perf_counter_ns()
            fut = call.future(body, timeout=10.0)
            fut.add_done_callback(functools.partial(on_done, t0=t0))
        for _ in range(inflight):  # drain
            sem.acquire(timeout=10.0)
        elapsed = time.perf_counter() - t_start
    q.put({"done": done, "errors": errors, "elapsed": elapsed, "lat_ns": lat})


def run(
    addr: str, method: str, body: bytes, duration: float, procs: int = 2, inflight: int = 8
) -> dict[str, Any]:
    """Total RPC/s over all processes, error count and latency percentiles (µs)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [
        ctx.Process(target=_worker, args=(addr, method, body, duration, inflight, q))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    results = [q.get(timeout=duration + 60) for _ in ps]
    for p in ps:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    lat = sorted(x for r in results for x in r["lat_ns"])
    elapsed = max(r["elapsed"] for r in results)
    done = sum(r["done"] for r in results)

    def pct(q_: float) -> float:
        return lat[min(len(lat) - 1, int(q_ * len(lat)))] / 1000 if lat else float("nan")

    return {
        "rps": done / elapsed if elapsed else 0.0,
        "done": done,
        "errors": sum(r["errors"] for r in results),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--addr", required=True)
    p.add_argument("--method", required=True, help="/package.Service/Method")
    p.add_argument("--body", required=True, help="file with the serialized request (unframed)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--inflight", type=int, default=8, help="outstanding calls per process")
    a = p.parse_args(argv)
    with open(a.body, "rb") as f:
        body = f.read()
    res = run(a.addr, a.method, body, a.duration, a.procs, a.inflight)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
