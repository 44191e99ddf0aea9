"""`gatehouse sync` as a process: settings from a YAML file and the environment, a bundle
whose signature is required, and clear refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from keys import write_keypair

from gatehouse.cli.demo import free_port
from gatehouse.server.client import wait_serving
from gatehouse.sor.store import SystemOfRecord

ROOT = Path(__file__).resolve().parents[2]
ONTRA = ROOT / "bundles" / "ontra"


def gh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_settings_from_a_file_and_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sor.db'}"
    SystemOfRecord(url).create_schema()
    port = free_port()
    cfg = tmp_path / "sync.yaml"
    # The file names the bundle and a listen address the environment then overrides.
    cfg.write_text(yaml.safe_dump({"bundle": str(ONTRA), "listen": "127.0.0.1:1", "poll": 0.2}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.cli.main", "sync", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "GATEHOUSE_DB": url, "GATEHOUSE_LISTEN": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", proc, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_missing_and_contradictory_settings_exit_2(tmp_path: Path) -> None:
    r = gh("sync", "--bundle", str(ONTRA))
    assert r.returncode == 2 and "--db is required" in r.stderr
    r = gh("sync", "--db", "sqlite://", "--bundle", str(ONTRA), "--mapping", "m.yaml")
    assert r.returncode == 2
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("db: sqlite://\nbundle: x\nno_such_option: 1\n")
    r = gh("sync", "--config", str(cfg))
    assert r.returncode == 2 and "no_such_option" in r.stderr


def test_an_unsigned_bundle_is_refused_when_a_key_is_configured(tmp_path: Path) -> None:
    _priv, pub = write_keypair(tmp_path)
    url = f"sqlite:///{tmp_path / 'sor.db'}"
    r = gh("sync", "--db", url, "--create-schema", "--bundle", str(ONTRA), "--pubkey", str(pub))
    assert r.returncode == 1 and "sign" in r.stderr.lower(), r.stderr
