"""The checked-in generated code in src/gatehouse/v1/ matches what proto/ generates now."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "src"
PROTO = ROOT / "proto"


def _generated(base: pathlib.Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for proto in sorted(PROTO.rglob("*.proto")):
        rel = proto.relative_to(PROTO).with_suffix("")
        for suffix in suffixes:
            path = base / rel.parent / f"{rel.name}{suffix}"
            if path.exists():
                out[str(rel.parent / f"{rel.name}{suffix}")] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("protos")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out


def test_there_are_protos() -> None:
    assert list(PROTO.rglob("*.proto")), "no .proto files under proto/"


@pytest.mark.parametrize("suffix", ["_pb2.py", "_pb2_grpc.py"])
def test_checked_in_code_is_fresh(regenerated: pathlib.Path, suffix: str) -> None:
    fresh = _generated(regenerated, (suffix,))
    current = _generated(CHECKED_IN, (suffix,))
    assert fresh, f"protoc produced no {suffix} files"
    assert sorted(current) == sorted(fresh), "generated file set differs: run scripts/gen_protos.py"
    for name, data in fresh.items():
        assert current[name] == data, f"{name} is stale: run `python scripts/gen_protos.py`"


def test_checked_in_stubs_are_fresh(regenerated: pathlib.Path) -> None:
    fresh = _generated(regenerated, ("_pb2.pyi",))
    current = _generated(CHECKED_IN, ("_pb2.pyi",))
    if not fresh:
        pytest.skip("mypy-protobuf not installed: stubs not generated")
    assert sorted(current) == sorted(fresh)
    for name, data in fresh.items():
        assert current[name] == data, f"{name} is stale: run `python scripts/gen_protos.py`"
