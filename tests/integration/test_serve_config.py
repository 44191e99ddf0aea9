"""`gatehouse serve --config FILE` with GATEHOUSE_* overrides, as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import yaml

from gatehouse.cli.demo import free_port
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def _tuples(tmp: Path) -> Path:
    fixture = yaml.safe_load((ROOT / "bundles/ontra/fixture.yaml").read_text())
    path = tmp / "tuples.txt"
    path.write_text("\n".join(fixture["relationships"]) + "\n")
    return path


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatehouse.cli.main", "serve", *args]


def test_config_file_env_and_flags(tmp_path: Path) -> None:
    file_port, env_port, file_metrics, flag_metrics = (free_port() for _ in range(4))
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "bundle": str(ROOT / "bundles/ontra"),
                "tuples": str(_tuples(tmp_path)),
                "listen": f"127.0.0.1:{file_port}",
                "threads": 4,
                "metrics-port": file_metrics,
            }
        )
    )
    env = {**os.environ, "GATEHOUSE_LISTEN": f"127.0.0.1:{env_port}"}
    proc = subprocess.Popen(
        _cmd("--config", str(cfg), "--metrics-port", str(flag_metrics)),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"serving 127.0.0.1:{env_port}," in line, line  # environment beats the file
        assert f"metrics on 127.0.0.1:{flag_metrics}" in line, line  # the flag beats the file
        with grpc.insecure_channel(f"127.0.0.1:{env_port}") as ch:
            r = pb_grpc.DecisionServiceStub(ch).Check(
                pb.CheckRequest(subject="user:finn", permission="read", resource="fund:fund_iii"),
                timeout=10,
            )
            assert r.allowed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_config_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("bundle: bundles/ontra\nmetrics-port: lots\n")
    r = subprocess.run(_cmd("--config", str(cfg)), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert "metrics-port: expected an integer, got 'lots'" in r.stderr
    cfg.write_text("bundle: bundles/ontra\nworkerz: 2\n")
    r = subprocess.run(_cmd("--config", str(cfg)), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown key 'workerz'" in r.stderr
    env = {**os.environ, "GATEHOUSE_THREADS": "many"}
    r = subprocess.run(_cmd("--schema", "x.zed", "--tuples", "t"), env=env, capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "GATEHOUSE_THREADS: expected an integer" in r.stderr
    r = subprocess.run(_cmd("--config", str(tmp_path / "missing.yaml")), capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "missing.yaml" in r.stderr
