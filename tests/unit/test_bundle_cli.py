"""`gatehouse bundle ...` end to end (subprocess), plus activation and last-good persistence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from keys import write_keypair

from gatehouse.bundle import (
    AssertionsFailed,
    activate,
    load_bundle,
    load_bundle_bytes,
    persist_last_good,
    read_directory,
    run_assertions,
    set_revision,
    write_archive,
)
from gatehouse.engine import DecisionState, PolicyRollback

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ["aktek", "importers", "infosum", "kontomatik", "ontra"]


def gh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatehouse.cli.main", "bundle", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _copy(name: str, tmp: Path) -> Path:
    dst = tmp / name
    shutil.copytree(
        ROOT / "bundles" / name, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    return dst


@pytest.mark.parametrize("name", SEEDS)
def test_seed_bundle_passes(name: str) -> None:
    r = gh("test", f"bundles/{name}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout


def test_failing_assertion_exits_4(tmp_path: Path) -> None:
    b = _copy("ontra", tmp_path)
    (b / "tests" / "broken.yaml").write_text(
        "fixture: ../fixture.yaml\nchecks:\n  - [user:tina, delete, fund:fund_i, allow]\n"
    )
    r = gh("test", b)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "expected allow, got deny" in r.stdout
    j = gh("test", b, "--format", "json")
    assert j.returncode == 4
    doc = json.loads(j.stdout)
    assert doc["failed"] == 1 and doc["passed"] > 0
    x = gh("test", b, "--format", "junit")
    assert x.returncode == 4
    root = ET.fromstring(x.stdout)
    assert root.get("failures") == "1"
    assert len(root.findall(".//failure")) == 1


def test_bad_schema_exits_3(tmp_path: Path) -> None:
    b = _copy("kontomatik", tmp_path)
    (b / "schema.zed").write_text("definition user {\n  relation broken: nosuch\n}\n")
    r = gh("test", b)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "invalid schema" in r.stderr


def test_malformed_assertion_file_exits_3(tmp_path: Path) -> None:
    b = _copy("ontra", tmp_path)
    (b / "tests" / "bad.yaml").write_text("fixture: ../../etc/passwd\nchecks: []\n")
    r = gh("test", b)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "escapes the bundle" in r.stderr


def test_missing_bundle_exits_3(tmp_path: Path) -> None:
    assert gh("test", tmp_path / "nope").returncode == 3


def test_build_is_deterministic_and_revision_overrides(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert gh("build", "bundles/aktek", "-o", a).returncode == 0
    assert gh("build", "bundles/aktek", "-o", b).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    files = load_bundle(a).files
    assert "gen.py" not in files
    c = tmp_path / "c.tar.gz"
    assert gh("build", "bundles/aktek", "-o", c, "--revision", "9").returncode == 0
    assert load_bundle(c).manifest.revision == 9
    r = gh("test", c)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_sign_verify_inspect_archive(tmp_path: Path, kind: str) -> None:
    priv, pub = write_keypair(tmp_path, kind)
    arc = tmp_path / "ontra.tar.gz"
    assert gh("build", "bundles/ontra", "-o", arc).returncode == 0
    v = gh("verify", arc, "--pubkey", pub)
    assert v.returncode == 3 and "not signed" in v.stderr
    s = gh("sign", arc, "--key", priv, "--key-id", "release")
    assert s.returncode == 0, s.stderr
    assert gh("verify", arc, "--pubkey", pub).returncode == 3  # default key id differs
    v = gh("verify", arc, "--pubkey", pub, "--key-id", "release")
    assert v.returncode == 0, v.stderr
    assert "signed by release" in v.stdout
    i = gh("inspect", arc, "--pubkey", pub, "--key-id", "release", "--format", "json")
    assert i.returncode == 0, i.stderr
    info = json.loads(i.stdout)
    assert info["name"] == "ontra" and info["signature"].startswith("verified")
    assert ".signatures.json" in [f["name"] for f in info["files"]]
    t = gh("inspect", arc)
    assert t.returncode == 0 and "not verified" in t.stdout
    assert gh("test", arc, "--pubkey", pub, "--key-id", "release").returncode == 0


def test_sign_directory_then_tamper(tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path, "ed25519")
    b = _copy("infosum", tmp_path)
    assert gh("sign", b, "--key", priv).returncode == 0
    assert (b / ".signatures.json").is_file()
    assert gh("verify", b, "--pubkey", pub).returncode == 0
    (b / "data" / "extra.yaml").write_text("x: 1\n")
    r = gh("verify", b, "--pubkey", pub)
    assert r.returncode == 3 and "not signed: data/extra.yaml" in r.stderr
    assert gh("test", b, "--pubkey", pub).returncode == 3
    assert gh("test", b).returncode == 0  # no key configured: signature not required


def test_run_assertions_matches_the_seed_tables() -> None:
    bundle = load_bundle(ROOT / "bundles" / "ontra")
    results = run_assertions(bundle.schema, bundle.files)
    assert results and all(r.passed for r in results)
    assert {r.kind for r in results} == {"check", "list", "subjects"}
    assert any(r.step == 0 for r in results)


def _ontra(revision: int) -> bytes:
    return write_archive(set_revision(read_directory(ROOT / "bundles" / "ontra"), revision))


def test_activate_and_rollback_rejected() -> None:
    state = DecisionState()
    v2 = load_bundle_bytes(_ontra(2))
    policy = activate(state, v2)
    assert (policy.name, policy.revision, policy.digest) == ("ontra", 2, v2.digest)
    v1 = load_bundle_bytes(_ontra(1))
    with pytest.raises(PolicyRollback):
        activate(state, v1)
    assert state.policy is not None and state.policy.revision == 2
    assert activate(state, v1, allow_rollback=True).revision == 1


def test_failing_assertions_block_activation() -> None:
    files = read_directory(ROOT / "bundles" / "ontra")
    files["tests/broken.yaml"] = (
        b"fixture: ../fixture.yaml\nchecks:\n  - [user:tina, delete, fund:fund_i, allow]\n"
    )
    state = DecisionState()
    with pytest.raises(AssertionsFailed, match="1 of") as exc:
        activate(state, load_bundle_bytes(write_archive(files)))
    assert len(exc.value.failures) == 1
    assert state.policy is None


def test_persist_last_good(tmp_path: Path) -> None:
    data = _ontra(3)
    target = persist_last_good(data, tmp_path / "state")
    assert target.read_bytes() == data
    persist_last_good(_ontra(4), tmp_path / "state")
    assert load_bundle(target).manifest.revision == 4
    assert [p.name for p in (tmp_path / "state").iterdir()] == [target.name]
