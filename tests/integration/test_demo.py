"""`gatehouse demo` runs a SQLite system of record, a sync worker process and a decision
server process on each seed bundle, and answers through them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

BUNDLES = sorted(
    p.parent.name for p in (pathlib.Path(__file__).parents[2] / "bundles").glob("*/schema.zed")
)


@pytest.mark.parametrize("scenario", BUNDLES)
def test_demo_serves_every_scenario(scenario: str, tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatehouse.cli.main",
            "demo",
            "--scenario",
            scenario,
            "--once",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is SERVING" in out.stdout
    answers = [
        line.split()[0] for line in out.stdout.splitlines() if line.startswith(("allow", "deny"))
    ]
    assert len(answers) >= 3, out.stdout
    assert "sqlite:///" in out.stdout and "(sync worker)" in out.stdout
    assert (tmp_path / "sor.db").exists()
    # The server persisted what it followed (at shutdown at the latest).
    assert (tmp_path / "server-data" / "data.snapshot").exists()


def test_demo_unknown_scenario_fails_clearly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", "demo", "--scenario", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no scenario 'nope'" in out.stderr


def _gh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_readme_tour_change_a_grant_and_see_the_answer_flip(tmp_path: pathlib.Path) -> None:
    """The README's five-minute tour: the demo runs until SIGTERM; an admin change through
    `gatehouse admin` returns a revision; the server answers at that revision."""
    import os
    import re
    import signal
    import time

    demo = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.cli.main", "demo", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        assert "is SERVING" in text, text
        addr = re.search(r"gRPC address : (\S+)", text)
        db = re.search(r"export GATEHOUSE_DB=(\S+)", text)
        bundle = re.search(r"export GATEHOUSE_BUNDLE=(\S+)", text)
        assert addr and db and bundle, text
        env = {
            **os.environ,
            "GATEHOUSE_DB": db.group(1).strip("'"),
            "GATEHOUSE_BUNDLE": bundle.group(1).strip("'"),
        }
        check = ["check", "--addr", addr.group(1), "user:sara", "update", "fund:fund_i"]
        before = _gh(*check)
        assert before.stdout.split()[0] == "allow", before.stdout + before.stderr
        # Sara (Standard) may not change access; Adam (Admin) may.
        refused = _gh(
            "admin", "access", "revoke", "northwind", "user:sara", "fund_i", "--as", "sara", env=env
        )
        assert refused.returncode == 3, refused.stdout + refused.stderr
        done = _gh(
            "admin", "access", "revoke", "northwind", "user:sara", "fund_i", "--as", "adam", env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        revision = re.search(r"revision (\d+)", done.stdout)
        assert revision, done.stdout
        after = _gh(*check[:3], "--at-least-revision", revision.group(1), *check[3:])
        assert after.returncode == 0, after.stderr
        assert after.stdout.split()[0] == "deny"
        assert int(after.stdout.split()[1]) >= int(revision.group(1))
    finally:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0
    # Every process the demo started is gone (their command lines name the data dir), and
    # the server persisted its data on the way out.
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
    assert (tmp_path / "server-data" / "data.snapshot").exists()
