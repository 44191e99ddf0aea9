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
