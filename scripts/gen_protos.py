"""Regenerate the checked-in protobuf/gRPC modules from proto/ (proto root == import root).

Usage: python scripts/gen_protos.py [--out DIR]   (default: src/)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(PROTO.rglob("*.proto"))
    if not files:
        return []
    out.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    # The mypy plugin lives beside this interpreter; the venv need not be on PATH.
    plugin = pathlib.Path(sys.executable).parent / "protoc-gen-mypy"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        *[str(f.relative_to(PROTO)) for f in files],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return files


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "src")
    ns = ap.parse_args()
    files = generate(ns.out)
    print(f"generated {len(files)} proto file(s) into {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
