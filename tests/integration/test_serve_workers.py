"""`gatehouse serve --workers N`: N real processes on one port, supervised by the parent."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from gatehouse.cli.demo import free_port
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 60
SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving (\S+), metrics on 127\.0\.0\.1:(\d+)")


def _tuples(tmp: Path) -> Path:
    fixture = yaml.safe_load((ROOT / "bundles/ontra/fixture.yaml").read_text())
    path = tmp / "tuples.txt"
    path.write_text("\n".join(fixture["relationships"]) + "\n")
    return path


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are both free (worker i serves metrics on p + i)."""
    for _ in range(50):
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        return p
    raise AssertionError("no two consecutive free ports")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"worker {pid} still running"


def _start(tmp: Path, port: int, metrics: int) -> tuple[subprocess.Popen[str], dict[int, int]]:
    cmd = [sys.executable, "-m", "gatehouse.cli.main", "serve", "--bundle", "bundles/ontra"]
    cmd += ["--tuples", str(_tuples(tmp)), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    cmd += ["--threads", "4", "--metrics-port", str(metrics), "--grace", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    # stderr is read on a thread, so a server that hangs without printing fails here with
    # what it did print, not at pytest's global timeout with nothing
    got: queue.Queue[str] = queue.Queue()
    err = proc.stderr

    def pump() -> None:
        for x in err:
            got.put(x)
        got.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    workers: dict[int, int] = {}  # index -> pid
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_S
    while len(workers) < 2:
        try:
            line = got.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise AssertionError(
                f"no two workers serving after {STARTUP_S} s: " + "".join(lines)
            ) from None
        lines.append(line)
        if not line:
            raise AssertionError("server exited: " + "".join(lines))
        m = SERVING.search(line)
        if m:
            index, pid, addr, mport = int(m[1]), int(m[2]), m[3], int(m[4])
            assert addr == f"127.0.0.1:{port}"
            assert mport == metrics + index
            workers[index] = pid
    assert "supervising 2 workers" in lines[0]
    return proc, workers


@pytest.mark.slow
def test_two_workers_share_a_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port, metrics = free_port(), _two_free_ports()
    proc, workers = _start(tmp_path, port, metrics)
    try:
        assert set(workers) == {0, 1} and len(set(workers.values())) == 2
        assert proc.pid not in workers.values()
        assert all(_alive(pid) for pid in workers.values())
        # Checks through the shared port; every new connection lands on one of the workers.
        answers = set()
        for _ in range(10):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.DecisionServiceStub(ch)
                ok = stub.Check(
                    pb.CheckRequest(
                        subject="user:finn", permission="read", resource="fund:fund_iii"
                    ),
                    timeout=10,
                )
                no = stub.Check(
                    pb.CheckRequest(
                        subject="user:sara", permission="read", resource="fund:fund_iii"
                    ),
                    timeout=10,
                )
                answers.add((ok.allowed, no.allowed))
        assert answers == {(True, False)}
        # Each worker is a full replica with its own metrics port: both answer.
        for i in (0, 1):
            url = f"http://127.0.0.1:{metrics + i}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            assert "gatehouse_policy_revision 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for pid in workers.values():
            _wait_gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_dying_worker_stops_the_group(tmp_path: Path) -> None:
    port, metrics = free_port(), _two_free_ports()
    proc, workers = _start(tmp_path, port, metrics)
    try:
        os.kill(workers[1], signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
        _wait_gone(workers[0])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", "serve", "--bundle", "bundles/ontra",
         "--tuples", str(_tuples(tmp_path)), "--listen", "127.0.0.1:0", "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "fixed port" in r.stderr
