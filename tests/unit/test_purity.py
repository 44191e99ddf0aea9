"""The decision core stays pure: it imports no adapter library (STYLE.md principle 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("grpc", "sqlalchemy", "prometheus_client", "cachetools", "psycopg", "jwt", "yaml")


@pytest.mark.parametrize("package", ["gatehouse.model", "gatehouse.graph", "gatehouse.engine"])
def test_core_imports_no_adapter_library(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("package", ["gatehouse.model", "gatehouse.graph", "gatehouse.engine"])
def test_public_surface_is_pinned(package: str) -> None:
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is exported but missing"
