"""`gatehouse serve --bundle`: a signed archive serves; an unsigned one with a key never does."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml
from keys import write_keypair

from gatehouse.cli.demo import free_port

ROOT = Path(__file__).resolve().parents[2]


def gh(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _tuples(tmp: Path) -> Path:
    fixture = yaml.safe_load((ROOT / "bundles/ontra/fixture.yaml").read_text())
    path = tmp / "tuples.txt"
    path.write_text("\n".join(fixture["relationships"]) + "\n")
    return path


def test_signed_bundle_serves_and_answers(tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path)
    arc = tmp_path / "ontra.tar.gz"
    assert gh("bundle", "build", "bundles/ontra", "-o", arc).returncode == 0
    assert gh("bundle", "sign", arc, "--key", priv, "--key-id", "release").returncode == 0
    port = free_port()
    cmd = [sys.executable, "-m", "gatehouse.cli.main", "serve", "--bundle", str(arc)]
    cmd += ["--pubkey", str(pub), "--key-id", "release", "--tuples", str(_tuples(tmp_path))]
    cmd += ["--listen", f"127.0.0.1:{port}"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            r = gh("check", "--addr", f"127.0.0.1:{port}", "user:finn", "read", "fund:fund_iii")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.stdout.split()[0] == "allow", r.stdout + r.stderr
        r = gh("check", "--addr", f"127.0.0.1:{port}", "user:sara", "read", "fund:fund_iii")
        assert r.stdout.split()[0] == "deny", r.stdout + r.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unsigned_bundle_with_key_configured_refuses_to_start(tmp_path: Path) -> None:
    _priv, pub = write_keypair(tmp_path)
    r = gh(
        "serve", "--bundle", "bundles/ontra", "--pubkey", pub, "--tuples", _tuples(tmp_path),
        "--listen", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert r.returncode == 1
    assert "not signed" in r.stderr


def _wait_answer(port: int, subject: str, perm: str, resource: str, want: str) -> str:
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        r = gh("check", "--addr", f"127.0.0.1:{port}", subject, perm, resource)
        out = r.stdout + r.stderr
        if r.returncode == 0 and r.stdout.split()[0] == want:
            return out
        time.sleep(0.3)
    raise AssertionError(f"no {want!r} within 60 s: {out}")


def test_bundle_from_url_then_last_good_when_source_is_down(tmp_path: Path) -> None:
    bport = free_port()
    source = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.cli.main", "bundle", "serve", "bundles/ontra",
         "--listen", f"127.0.0.1:{bport}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    state_dir = tmp_path / "state"
    tuples = _tuples(tmp_path)

    def start_server(port: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli.main", "serve",
             "--bundle", f"http://127.0.0.1:{bport}/bundle.tar.gz", "--state-dir", str(state_dir),
             "--tuples", str(tuples), "--listen", f"127.0.0.1:{port}", "--poll-min", "0.5",
             "--poll-max", "1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    try:
        time.sleep(1.0)  # the bundle source binds its port
        port = free_port()
        server = start_server(port)
        try:
            _wait_answer(port, "user:finn", "read", "fund:fund_iii", "allow")
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert (state_dir / "last-good.tar.gz").exists()
    finally:
        source.terminate()
        source.wait(timeout=30)
    # The source is down now: a restarted server serves the persisted last good bundle.
    port = free_port()
    server = start_server(port)
    try:
        _wait_answer(port, "user:finn", "read", "fund:fund_iii", "allow")
        _wait_answer(port, "user:sara", "read", "fund:fund_iii", "deny")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "last good bundle activated" in err
