"""Rejected bundles through real processes: `gatehouse bundle serve` + `serve --bundle URL`.

Every rejection leaves the active bundle serving and shows in the metric, Status and the log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import yaml
from keys import write_keypair

from gatehouse.cli.demo import free_port
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
CHECK = pb.CheckRequest(subject="user:finn", permission="read", resource="fund:fund_iii")


def gh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def _publish(published: Path, src: Path, revision: int, key: Path | None) -> None:
    """Build (and sign) `src` at `revision`, then atomically replace the published archive."""
    tmp = published.with_suffix(".new.tar.gz")
    r = gh("bundle", "build", src, "-o", tmp, "--revision", str(revision))
    assert r.returncode == 0, r.stderr
    if key is not None:
        r = gh("bundle", "sign", tmp, "--key", key, "--key-id", "release")
        assert r.returncode == 0, r.stderr
    os.replace(tmp, published)


def _status_until(stub: pb_grpc.DecisionServiceStub, ok: object, what: str) -> pb.StatusResponse:
    deadline = time.monotonic() + 60
    s = stub.Status(pb.StatusRequest(), timeout=30, wait_for_ready=True)
    while time.monotonic() < deadline:
        s = stub.Status(pb.StatusRequest(), timeout=30, wait_for_ready=True)
        if ok(s):  # type: ignore[operator]
            return s
        time.sleep(0.2)
    raise AssertionError(f"no {what} within 60 s: {s}")


def _rejections(metrics_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found = re.findall(r'^gatehouse_bundle_rejections_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {k: float(v) for k, v in found}


def test_rejected_bundles_keep_the_active_one_and_are_reported(tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path)
    published = tmp_path / "published.tar.gz"
    _publish(published, ROOT / "bundles/ontra", 1, priv)
    fixture = yaml.safe_load((ROOT / "bundles/ontra/fixture.yaml").read_text())
    tuples = tmp_path / "tuples.txt"
    tuples.write_text("\n".join(fixture["relationships"]) + "\n")
    bport, port, mport = free_port(), free_port(), free_port()
    source = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.cli.main", "bundle", "serve", str(published),
         "--listen", f"127.0.0.1:{bport}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = None
    try:
        deadline = time.monotonic() + 30
        while True:  # the bundle source binds its port
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{bport}/bundle.tar.gz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "bundle source did not start"
                time.sleep(0.2)
        server = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli.main", "serve",
             "--bundle", f"http://127.0.0.1:{bport}/bundle.tar.gz",
             "--pubkey", str(pub), "--key-id", "release", "--tuples", str(tuples),
             "--listen", f"127.0.0.1:{port}", "--metrics-port", str(mport),
             "--poll-min", "0.2", "--poll-max", "0.4"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            s = _status_until(stub, lambda s: s.ready, "ready server")
            assert s.policy_revision == 1 and not s.HasField("last_rejection")
            assert s.rejections_total == 0 and s.policy_age_seconds >= 0
            assert set(_rejections(mport).values()) == {0.0}

            # 1. Unsigned revision 2: refused by the signature check.
            _publish(published, ROOT / "bundles/ontra", 2, None)
            s = _status_until(stub, lambda s: s.HasField("last_rejection"), "rejection")
            r = s.last_rejection
            assert (r.category, r.revision) == ("signature", 2)
            assert "not signed" in r.reason and r.time.seconds > 0
            assert s.policy_revision == 1 and s.ready
            assert stub.Check(CHECK, timeout=10).allowed  # the old bundle keeps serving
            assert _rejections(mport)["signature"] >= 1

            # 2. Signed revision 3 whose own assertions fail.
            broken = tmp_path / "broken"
            shutil.copytree(ROOT / "bundles/ontra", broken)
            (broken / "tests/broken.yaml").write_text(
                "fixture: ../fixture.yaml\nchecks: [[user:tina, delete, fund:fund_i, allow]]\n"
            )
            _publish(published, broken, 3, priv)
            s = _status_until(
                stub, lambda s: s.last_rejection.category == "assertions", "assertions rejection"
            )
            assert s.last_rejection.revision == 3 and "assertions fail" in s.last_rejection.reason
            assert s.policy_revision == 1 and s.rejections_total >= 2
            resp = stub.Check(CHECK, timeout=10)
            assert resp.allowed and resp.policy_revision == 1
            counts = _rejections(mport)
            assert counts["assertions"] >= 1 and counts["signature"] >= 1
            assert counts["digest"] == 0 and counts["rollback"] == 0

            # 3. A good signed revision 4 is activated again.
            _publish(published, ROOT / "bundles/ontra", 4, priv)
            _status_until(stub, lambda s: s.policy_revision == 4, "revision 4")
    finally:
        if server is not None:
            server.terminate()
            _out, err = server.communicate(timeout=30)
        source.terminate()
        source.wait(timeout=30)
    assert "bundle rejected [reason=signature revision=2]: bundle is not signed" in err
    assert "bundle rejected [reason=assertions revision=3]" in err
    assert "the active bundle keeps serving" in err
