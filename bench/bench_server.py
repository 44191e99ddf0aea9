"""gRPC server benchmark: `gatehouse serve` on one pinned core, driven by h2load on another.

    python bench/bench_server.py --tuples 1000000 --out bench/results-server.md
    python bench/bench_server.py --quick --out /tmp/server.md      # 10^5 tuples, short runs

Per size: generate the data (bench/gen.py) into a temp dir, start `gatehouse serve` pinned to
core 0 (`taskset -c 0`), wait until gRPC health reports SERVING, then measure from core 1:

* Ping, Check (one allowed, one denied pair) and CheckBatch(100) throughput with `h2load`
  (`-c 1 -m 16`, timed with `-D`) replaying a gRPC-framed serialized request
  (flag byte 0 + 4-byte big-endian length + protobuf). CheckBatch is measured in both forms:
  columnar (`subjects`/`permissions`/`resources` in, packed `allowed` out) and nested
  (`checks`/`results`), with the same 100 pairs. Ping runs before and after the others
  and its mean is the RPC floor the Check/Ping ratio is computed against, so the ratio comes
  from one run on one server. Check p50/p99 at 16 in flight come from h2load's --log-file.
* Server CPU per RPC: the server process's user+system CPU time (/proc/PID/stat) across each
  h2load run divided by the requests it answered. It is much less sensitive than RPC/s to
  other processes competing for the server's core, so it is reported beside every rate.
* ListAllowed of the big tenant's admin (~10,000 ids, page_size 10,000, whole stream read)
  with the Python client, sequential calls, p50/p99, and the server's CPU time per call.
* After the server stops: Ping against a bare grpcio server (generated stubs only, same core,
  same thread count, grpcio's default I/O), the floor of grpcio's own thread-pool server.
  `gatehouse serve` answers Check, CheckBatch and Ping on its fast path (one thread, no
  per-call thread hand-off, gRPC I/O on that thread: gatehouse.server.fastpath), so it can
  beat that floor; `--serve-arg=--no-fast-path` measures the plain thread-pool path instead.

If `h2load` is missing, `apt-get install -y nghttp2-client` is tried once; if that fails the
multi-process Python generator in bench/loadgen.py is used (and the table says so).
The server is killed in a finally block; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

from gatehouse.server.client import wait_serving  # noqa: E402
from gatehouse.v1 import decision_pb2 as pb  # noqa: E402
from gatehouse.v1 import decision_pb2_grpc as pb_grpc  # noqa: E402

SERVICE = "/gatehouse.v1.DecisionService"
SERVER_CORE = "0"
LOAD_CORE = "1"
BATCH = 100
INFLIGHT = 16


def frame(msg: Any) -> bytes:
    """gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    body: bytes = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_h2load() -> str | None:
    path = shutil.which("h2load")
    if path:
        return path
    if shutil.which("apt-get"):
        print("h2load missing: trying apt-get install -y nghttp2-client", file=sys.stderr)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                ["apt-get", "install", "-y", "nghttp2-client"],
                check=False,
                timeout=300,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    return shutil.which("h2load")


@dataclass
class Load:
    rps: float
    done: int
    failed: int
    p50_us: float
    p99_us: float
    cpu_us: float = float("nan")  # server CPU time per answered request
    lat: list[float] = field(default_factory=list)  # each answered request's latency (µs)
    seconds: float = 0.0  # how long the timed requests took


def pooled(runs: list[Load]) -> Load:
    """Several runs of one request as one: rates and CPU over all, percentiles of all."""
    done = sum(r.done for r in runs)
    secs = sum(r.seconds for r in runs)
    cpu = sum(r.cpu_us * r.done for r in runs)
    lat = [x for r in runs for x in r.lat]
    return Load(
        done / secs if secs else float("nan"),
        done,
        sum(r.failed for r in runs),
        pct(lat, 0.5),
        pct(lat, 0.99),
        cpu / max(1, done),
        lat,
        secs,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def h2load_run(
    h2load: str, addr: str, method: str, body: bytes, duration: float, tmp: Path, pid: int
) -> Load:
    """One h2load run; `pid` is the server's, whose CPU time is read when the 1 s warm-up
    ends and when h2load exits, so `cpu_us` covers the timed requests only."""
    req = tmp / f"{method}.bin"
    req.write_bytes(body)
    log = tmp / f"{method}.log"
    log.unlink(missing_ok=True)
    cmd = [
        "taskset", "-c", LOAD_CORE, h2load,
        "-c", "1", "-m", str(INFLIGHT), "-t", "1",
        "-D", f"{round(duration * 1000)}ms", "--warm-up-time", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(req), f"--log-file={log}",
        f"http://{addr}{SERVICE}/{method}",
    ]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # --warm-up-time
        c0 = cpu_seconds(pid)
        stdout, stderr = run.communicate(timeout=duration + 60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    c1 = cpu_seconds(pid)
    text = stdout + stderr
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    r = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", text
    )
    s = re.search(r"status codes: (\d+) 2xx", text)
    if not m or not r or run.returncode != 0:
        raise RuntimeError(f"h2load failed ({run.returncode}):\n{text}")
    ok2xx = int(s.group(1)) if s else 0
    lat: list[float] = []
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(float(parts[2]))
    done = int(r.group(2))
    cpu_us = (c1 - c0) * 1e6 / max(1, done)
    rps = float(m.group(1))
    return Load(rps, done, done - ok2xx, pct(lat, 0.5), pct(lat, 0.99), cpu_us, lat, done / rps)


def loadgen_run(addr: str, method: str, body: bytes, duration: float, tmp: Path) -> Load:
    req = tmp / f"{method}.raw"
    req.write_bytes(body[5:])  # loadgen takes the unframed message
    cmd = [
        "taskset", "-c", LOAD_CORE, sys.executable, str(HERE / "loadgen.py"),
        "--addr", addr, "--method", f"{SERVICE}/{method}", "--body", str(req),
        "--duration", f"{duration:g}", "--procs", "2", "--inflight", str(INFLIGHT // 2),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return Load(d["rps"], d["done"], d["errors"], d["p50_us"], d["p99_us"])


def pick_pairs(
    stub: pb_grpc.DecisionServiceStub, ds: gen.Dataset, rng: random.Random
) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """One allowed and one denied same-tenant (user, fund) pair of a small tenant, via Check."""
    ten = ds.tenants[1] if len(ds.tenants) > 1 else ds.tenants[0]
    allowed = denied = None
    for _ in range(5000):
        u = ten.users[rng.randrange(2, len(ten.users))]  # not an admin
        f = ten.funds[rng.randrange(len(ten.funds))]
        r = stub.Check(pb.CheckRequest(subject=u, permission="read", resource=f), timeout=5)
        if r.allowed and allowed is None:
            allowed = (u, f, r.reason)
        elif not r.allowed and denied is None:
            denied = (u, f, r.reason)
        if allowed and denied:
            return allowed, denied
    raise RuntimeError("could not find both an allowed and a denied pair")


def batch_requests(
    ds: gen.Dataset, rng: random.Random
) -> tuple[pb.CheckBatchRequest, pb.CheckBatchRequest]:
    """BATCH random same-tenant user/fund pairs over random tenants (allowed and denied), as a
    columnar and as a nested request."""
    pairs = []
    for _ in range(BATCH):
        ten = ds.tenants[rng.randrange(len(ds.tenants))]
        u = ten.users[rng.randrange(len(ten.users))]
        f = ten.funds[rng.randrange(len(ten.funds))]
        pairs.append((u, f))
    columns = pb.CheckBatchRequest(
        subjects=[u for u, _ in pairs], permissions=["read"], resources=[f for _, f in pairs]
    )
    nested = pb.CheckBatchRequest(
        checks=[pb.CheckRequest(subject=u, permission="read", resource=f) for u, f in pairs]
    )
    return columns, nested


def verify(ch: grpc.Channel, method: str, framed: bytes) -> bytes:
    """Send the exact bytes h2load will replay once through grpcio: they must be accepted."""
    call = ch.unary_unary(
        f"{SERVICE}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    resp: bytes = call(framed[5:], timeout=10)
    return resp


# A bare grpcio server answering Ping with the generated stubs: no gatehouse code at all.
BARE_SERVER = """
import signal, sys, threading
from concurrent import futures
import grpc
from gatehouse.v1 import decision_pb2 as pb, decision_pb2_grpc as pb_grpc
class Servicer(pb_grpc.DecisionServiceServicer):
    def Ping(self, request, context):
        return pb.PingResponse()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(sys.argv[2])))
pb_grpc.add_DecisionServiceServicer_to_server(Servicer(), server)
server.add_insecure_port(sys.argv[1])
server.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
server.stop(0)
"""


def bare_ping(a: argparse.Namespace, h2load: str, tmp: Path) -> Load:
    """Ping against BARE_SERVER (same core, same thread count): grpcio's own floor."""
    addr = f"127.0.0.1:{free_port()}"
    cmd = ["taskset", "-c", SERVER_CORE, sys.executable, "-c", BARE_SERVER, addr, str(a.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(addr) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            body = frame(pb.PingRequest())
            verify(ch, "Ping", body)
        return h2load_run(h2load, addr, "Ping", body, a.duration, tmp, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_size(n: int, a: argparse.Namespace, h2load: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {"target": n}
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    ds = gen.generate(n, a.seed)
    res["tuples"] = len(ds.tuples)
    res["tenants"] = len(ds.tenants)
    with tempfile.TemporaryDirectory(prefix="gh-bench-server-") as d:
        tmp = Path(d)
        schema = tmp / "schema.zed"
        tuples = tmp / "tuples.txt"
        schema.write_text(gen.SCHEMA, encoding="utf-8")
        tuples.write_text("\n".join(ds.tuples) + "\n", encoding="utf-8")
        print(f"[{n}] data: {len(ds.tuples)} tuples in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        port = free_port()
        addr = f"127.0.0.1:{port}"
        gatehouse = shutil.which("gatehouse") or str(Path(sys.executable).parent / "gatehouse")
        cmd = [
            "taskset", "-c", SERVER_CORE, gatehouse, "serve",
            "--schema", str(schema), "--tuples", str(tuples),
            "--listen", addr, "--threads", str(a.threads), "--grace", "1", *a.serve_arg,
        ]  # fmt: skip
        log = open(tmp / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            res["ready_s"] = wait_serving(addr, proc, timeout=a.ready_timeout, poll=0.2)
            print(f"[{n}] server SERVING after {res['ready_s']:.1f} s", file=sys.stderr, flush=True)
            with grpc.insecure_channel(addr) as ch:
                stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
                allowed, denied = pick_pairs(stub, ds, rng)
                res["allowed_pair"], res["denied_pair"] = allowed, denied
                bodies = {
                    "Ping": frame(pb.PingRequest()),
                    "Check allowed": frame(
                        pb.CheckRequest(subject=allowed[0], permission="read", resource=allowed[1])
                    ),
                    "Check denied": frame(
                        pb.CheckRequest(subject=denied[0], permission="read", resource=denied[1])
                    ),
                }
                columns, nested = batch_requests(ds, rng)
                bodies["CheckBatch columns"] = frame(columns)
                bodies["CheckBatch nested"] = frame(nested)
                cresp = pb.CheckBatchResponse.FromString(verify(ch, "CheckBatch", frame(columns)))
                nresp = pb.CheckBatchResponse.FromString(verify(ch, "CheckBatch", frame(nested)))
                if list(cresp.allowed) != [r.allowed for r in nresp.results]:
                    raise RuntimeError("columnar and nested CheckBatch disagree")
                res["batch_allowed"] = sum(cresp.allowed)
                for name, body in bodies.items():
                    verify(ch, name.split()[0], body)

                def load(name: str, duration: float = a.duration) -> Load:
                    method = name.split()[0]
                    if h2load:
                        ld = h2load_run(h2load, addr, method, bodies[name], duration, tmp, proc.pid)
                    else:
                        c0 = cpu_seconds(proc.pid)
                        ld = loadgen_run(addr, method, bodies[name], duration, tmp)
                        # includes the generator's warm-up call and start: an overestimate
                        ld.cpu_us = (cpu_seconds(proc.pid) - c0) * 1e6 / max(1, ld.done)
                    print(f"[{n}] {name}: {ld.rps:,.0f} RPC/s, p50 {ld.p50_us:.0f} µs, "
                          f"p99 {ld.p99_us:.0f} µs, server CPU {ld.cpu_us:.0f} µs/RPC, "
                          f"failed {ld.failed}", file=sys.stderr, flush=True)  # fmt: skip
                    return ld

                # Ping and the two Checks take turns in short rounds, so a change in the
                # machine's state (other tenants come and go) reaches all three alike.
                names = ("Ping", "Check allowed", "Check denied")
                rounds: dict[str, list[Load]] = {k: [] for k in names}
                for _ in range(a.rounds):
                    for k in names:
                        rounds[k].append(load(k, a.duration / a.rounds))
                res["rounds"] = rounds
                res["ping"] = pooled(rounds["Ping"])
                res["check_allowed"] = pooled(rounds["Check allowed"])
                res["check_denied"] = pooled(rounds["Check denied"])
                res["batch"] = load("CheckBatch columns")
                res["batch_nested"] = load("CheckBatch nested")

                # ListAllowed: the big tenant's admin, sequential Python calls.
                lreq = pb.ListAllowedRequest(
                    subject=ds.big_admin, permission="read", resource_type="fund", page_size=10000
                )
                lat: list[float] = []
                n_ids = 0
                c0 = 0.0
                for i in range(a.lists + 3):
                    if i == 3:  # after 3 warm-up calls
                        c0 = cpu_seconds(proc.pid)
                    t = time.perf_counter()
                    n_ids = sum(len(p.ids) for p in stub.ListAllowed(lreq, timeout=30))
                    dt = (time.perf_counter() - t) * 1000
                    if i >= 3:
                        lat.append(dt)
                res["list_cpu_ms"] = (cpu_seconds(proc.pid) - c0) * 1000 / a.lists
                res["list_ids"] = n_ids
                res["list_p50"] = statistics.median(lat)
                res["list_p99"] = pct(lat, 0.99)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()
            if "list_p99" not in res:
                sys.stderr.write((tmp / "server.log").read_text(errors="replace")[-3000:])
        if h2load:
            res["bare"] = ld = bare_ping(a, h2load, tmp)
            print(f"[{n}] bare grpcio Ping: {ld.rps:,.0f} RPC/s, p50 {ld.p50_us:.0f} µs, "
                  f"p99 {ld.p99_us:.0f} µs, server CPU {ld.cpu_us:.0f} µs/RPC",
                  file=sys.stderr, flush=True)  # fmt: skip
    return res


def mark(ok: bool) -> str:
    return " ✅" if ok else " ❌"


def table(results: list[dict[str, Any]], a: argparse.Namespace, tool: str, loads: str) -> str:
    cols = " | ".join(f"{r['tuples']:,} tuples" for r in results)
    lines = [
        "## Server (gRPC, `gatehouse serve`)",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"**shared with other processes** (1-min load average {loads}), so absolute numbers "
        "are noisy: compare the ratios, which are measured on the same server in one run. "
        f"Server `gatehouse serve --threads {a.threads}{''.join(' ' + x for x in a.serve_arg)}` "
        f"pinned to core {SERVER_CORE}; load "
        f"from {tool} pinned to core {LOAD_CORE}, 1 connection, {INFLIGHT} streams in "
        f"flight, {a.duration:g} s per measurement, each run after 1 s warm-up. Ping (an empty "
        "request, answered with empty bytes: the floor of the stack) and the two Checks take "
        f"turns in {a.rounds} rounds of {a.duration / a.rounds:g} s, so a change in the "
        "machine's state reaches all three alike; their rows pool the rounds. Server CPU/RPC "
        "is the server "
        "process's CPU time over a run divided by the requests answered (less sensitive to "
        "competing processes than RPC/s). The bare grpcio Ping runs after the server is "
        "stopped, on the same core with the same thread count: a grpcio server with only "
        "the generated stubs, i.e. the floor of the stack. ListAllowed: Python client, "
        f"sequential, {a.lists} calls, page_size 10,000, whole stream read.",
        "",
        f"| metric | target | {cols} |",
        "|---|---|" + "---:|" * len(results),
    ]

    def row(name: str, target: str, vals: list[str]) -> None:
        lines.append(f"| {name} | {target} | " + " | ".join(vals) + " |")

    row("tenants", "", [str(r["tenants"]) for r in results])
    row("server ready (load + SERVING) (s)", "", [f"{r['ready_s']:.1f}" for r in results])
    row("Ping RPC/s", "",
        [f"{r['ping'].rps:,.0f}" for r in results])  # fmt: skip
    row("Ping server CPU per RPC (µs)", "",
        [f"{r['ping'].cpu_us:.0f}" for r in results])  # fmt: skip
    if all("bare" in r for r in results):
        row("bare grpcio Ping (no gatehouse code): RPC/s, server CPU per RPC (µs)", "",
            [f"{r['bare'].rps:,.0f}, {r['bare'].cpu_us:.0f}" for r in results])  # fmt: skip
        row(f"bare grpcio Ping p50 / p99 at {INFLIGHT} in flight (ms)", "",
            [f"{r['bare'].p50_us / 1000:.2f} / {r['bare'].p99_us / 1000:.2f}"
             for r in results])  # fmt: skip
    for key, label in (("check_allowed", "allowed"), ("check_denied", "denied")):
        row(f"Check {label} RPC/s", "", [f"{r[key].rps:,.0f}" for r in results])
    row("Check server CPU per RPC (µs, allowed / denied)", "",
        [f"{r['check_allowed'].cpu_us:.0f} / {r['check_denied'].cpu_us:.0f}"
         for r in results])  # fmt: skip
    vals = []
    for r in results:
        ping = r["ping"].cpu_us
        ca, cd = ping / r["check_allowed"].cpu_us, ping / r["check_denied"].cpu_us
        vals.append(f"{ca:.0%} / {cd:.0%}" + mark(min(ca, cd) >= 0.85))
    row("Ping CPU / Check CPU per RPC (allowed / denied)", "≥ 85%", vals)
    vals = []
    for r in results:
        ping = r["ping"].rps
        ra, rd = r["check_allowed"].rps / ping, r["check_denied"].rps / ping
        vals.append(f"{ra:.0%} / {rd:.0%}" + mark(min(ra, rd) >= 0.85))
    row("Check / Ping (allowed / denied)", "≥ 85%", vals)
    vals = []
    for r in results:
        rr = r["rounds"]
        per = [
            min(c.rps for c in (ca, cd)) / p.rps
            for p, ca, cd in zip(rr["Ping"], rr["Check allowed"], rr["Check denied"], strict=True)
        ]
        vals.append(f"{min(per):.0%} to {max(per):.0%}")
    row("Check / Ping in each round (the lower of allowed, denied)", "", vals)
    row(f"Check p50 at {INFLIGHT} in flight (ms, allowed / denied)", "",
        [f"{r['check_allowed'].p50_us / 1000:.2f} / {r['check_denied'].p50_us / 1000:.2f}"
         for r in results])  # fmt: skip
    vals = []
    for r in results:
        pa, pd = r["check_allowed"].p99_us / 1000, r["check_denied"].p99_us / 1000
        vals.append(f"{pa:.2f} / {pd:.2f}" + mark(max(pa, pd) <= 2.0))
    row(f"Check p99 at {INFLIGHT} in flight (ms, allowed / denied)", "≤ 2", vals)
    row(f"CheckBatch({BATCH}) columnar RPC/s", "", [f"{r['batch'].rps:,.0f}" for r in results])
    row(f"CheckBatch({BATCH}) columnar checks/s on one core", "≥ 150,000",
        [f"{r['batch'].rps * BATCH:,.0f}" + mark(r["batch"].rps * BATCH >= 150_000)
         for r in results])  # fmt: skip
    row(f"CheckBatch({BATCH}) columnar server CPU per check (µs)", "≤ 6.7",
        [f"{r['batch'].cpu_us / BATCH:.1f}" + mark(r["batch"].cpu_us / BATCH <= 1e6 / 150_000)
         for r in results])  # fmt: skip
    row(f"CheckBatch({BATCH}) nested checks/s on one core", "",
        [f"{r['batch_nested'].rps * BATCH:,.0f}" for r in results])  # fmt: skip
    row(f"CheckBatch({BATCH}) nested server CPU per check (µs)", "",
        [f"{r['batch_nested'].cpu_us / BATCH:.1f}" for r in results])  # fmt: skip
    row("CheckBatch / Ping (RPC/s)", "",
        [f"{r['batch'].rps / r['ping'].rps:.1%}"
         for r in results])  # fmt: skip
    row("ListAllowed ids returned", "~10,000", [f"{r['list_ids']:,}" for r in results])
    row("ListAllowed p50 (ms)", "", [f"{r['list_p50']:.2f}" for r in results])
    row("ListAllowed p99 (ms)", "≤ 10",
        [f"{r['list_p99']:.2f}" + mark(r["list_p99"] <= 10) for r in results])  # fmt: skip
    row("ListAllowed server CPU per call (ms)", "", [f"{r['list_cpu_ms']:.2f}" for r in results])
    keys = ("ping", "check_allowed", "check_denied", "batch", "batch_nested")
    failed = [sum(r[k].failed for k in keys) for r in results]
    row("load requests failed (non-2xx)", "0", [str(f) for f in failed])
    lines.append("")
    for r in results:
        lines.append(
            f"{r['tuples']:,} tuples: allowed pair `{r['allowed_pair'][0]}` → "
            f"`{r['allowed_pair'][1]}` ({r['allowed_pair'][2]}), denied pair "
            f"`{r['denied_pair'][0]}` → `{r['denied_pair'][1]}` ({r['denied_pair'][2]}); "
            f"batch: {r['batch_allowed']}/{BATCH} allowed, random same-tenant pairs (the same "
            "pairs in both forms)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tuples", type=int, action="append", help="repeatable; default 10^6")
    p.add_argument("--out", help="write the markdown table here")
    p.add_argument("--duration", type=float, default=None, help="seconds per h2load run (10)")
    p.add_argument("--lists", type=int, default=None, help="timed ListAllowed calls (100)")
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="Ping, Check allowed, Check denied take turns this many times, each round "
        "running duration/rounds seconds",
    )
    p.add_argument("--threads", type=int, default=16, help="server RPC threads")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra `gatehouse serve` argument, repeatable (e.g. --serve-arg=--no-fast-path)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="10^5 tuples, 3 s runs, 30 lists")
    a = p.parse_args(argv)
    sizes = a.tuples or ([100_000] if a.quick else [1_000_000])
    if a.duration is None:
        a.duration = 3.0 if a.quick else 10.0
    if a.lists is None:
        a.lists = 30 if a.quick else 100
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        print("needs taskset and at least 2 CPUs", file=sys.stderr)
        return 2
    h2load = ensure_h2load()
    tool = "h2load" if h2load else "bench/loadgen.py (Python grpcio fallback: h2load missing)"
    # This process (ListAllowed client, orchestration) stays off the server's core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    load0 = os.getloadavg()[0]
    results = [run_size(n, a, h2load) for n in sizes]
    loads = f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    md = table(results, a, tool, loads)
    print(md)
    if a.out:
        Path(a.out).write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
