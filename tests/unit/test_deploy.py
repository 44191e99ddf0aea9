"""The deploy manifests parse, wire the sidecar correctly and only use flags the CLI has."""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from gatehouse.cli.main import build_parser

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
EXPECTED_KINDS = {
    "app-with-sidecar.yaml": ["Deployment"],
    "sync-worker.yaml": ["Deployment", "Service"],
    "bundle-config.yaml": ["ConfigMap"],
    "prometheus-scrape.yaml": ["ConfigMap"],
}


def _docs(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _verbs() -> set[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse: no public accessor
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def _check_args(args: list[str]) -> None:
    """Parse `args` with the real CLI parser; skip verbs that are not built yet."""
    verb = args[0]
    if verb not in _verbs():
        pytest.skip(f"`gatehouse {verb}` verb does not exist yet")
    # Substitute placeholders the way kubelet/systemd would.
    concrete = [re.sub(r"\$\(?\{?[A-Z_]+\}?\)?", "X", a) for a in args]
    if verb == "serve" and not any(a.startswith("--tuples") for a in concrete):
        concrete.append("--tuples=X")
    try:
        build_parser().parse_args(concrete)
    except SystemExit as e:  # argparse error
        raise AssertionError(f"gatehouse rejects {args}") from e


def test_every_manifest_parses_with_expected_kinds() -> None:
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(EXPECTED_KINDS)
    for name, kinds in EXPECTED_KINDS.items():
        assert [d["kind"] for d in _docs(K8S / name)] == kinds, name


def _sidecar(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in pod_spec["initContainers"] if c["name"] == "gatehouse"]
    return c


def test_sidecar_is_native_with_grpc_probes_and_hardened() -> None:
    (dep,) = _docs(K8S / "app-with-sidecar.yaml")
    spec = dep["spec"]["template"]["spec"]
    c = _sidecar(spec)
    assert c["restartPolicy"] == "Always"
    assert "grpc" in c["startupProbe"] and "grpc" in c["readinessProbe"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert {"requests", "limits"} <= set(c["resources"])
    assert any(a.startswith("--unix=/run/gatehouse/") for a in c["args"])
    socket_vol = {v["name"]: v for v in spec["volumes"]}["gatehouse-socket"]
    assert "emptyDir" in socket_vol
    app = spec["containers"][0]
    assert "gatehouse-socket" in {m["name"] for m in app["volumeMounts"]}
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert any(a == f"--metrics-port={ann['prometheus.io/port']}" for a in c["args"])


def test_sidecar_args_exist_in_cli() -> None:
    (dep,) = _docs(K8S / "app-with-sidecar.yaml")
    _check_args(_sidecar(dep["spec"]["template"]["spec"])["args"])


def test_sync_worker_args_exist_in_cli() -> None:
    dep = _docs(K8S / "sync-worker.yaml")[0]
    _check_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])


def _exec_start(unit: str) -> list[str]:
    text = (DEPLOY / "systemd" / unit).read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    assert "DynamicUser=yes" in text and "ProtectSystem=strict" in text
    assert "EnvironmentFile=" in text
    return shlex.split(line.removeprefix("ExecStart="))[1:]


@pytest.mark.parametrize("unit", ["gatehouse-serve.service", "gatehouse-sync.service"])
def test_systemd_exec_start_args_exist_in_cli(unit: str) -> None:
    _check_args(_exec_start(unit))


def test_helm_sidecar_template_args_exist_in_cli() -> None:
    text = (DEPLOY / "helm" / "gatehouse" / "templates" / "_sidecar.tpl").read_text()
    args = re.findall(r"^    - (serve|--[a-z-]+(?:=.*)?)$", text, re.M)
    assert args[0] == "serve" and len(args) > 3
    _check_args([re.sub(r"\{\{.*?\}\}", "1", a) for a in args])


def test_containerfile() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    # built where a C compiler exists, run from the slim image
    assert stages == ["python:3.11", "python:3.11-slim"]
    assert "import gatehouse.engine._kernel, gatehouse.graph._pack" in text
    assert re.search(r"^USER \d+", text, re.M)
    assert 'ENTRYPOINT ["gatehouse"]' in text


def test_helm_chart_renders() -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not on PATH: chart rendering not checked")
    out = subprocess.run(
        [helm, "template", "t", str(DEPLOY / "helm" / "gatehouse")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "Deployment" in kinds and "Service" in kinds


def test_the_wheel_carries_migrations_and_type_stubs(tmp_path: pathlib.Path) -> None:
    """A non-editable install (the container image) needs the Alembic migrations and the
    generated stubs as package data."""
    import subprocess
    import sys
    import zipfile

    root = DEPLOY.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gatehouse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "gatehouse/sor/migrations/env.py",
        "gatehouse/sor/migrations/script.py.mako",
        "gatehouse/sor/migrations/versions/0001_initial.py",
        "gatehouse/v1/decision_pb2.pyi",
        "gatehouse/py.typed",
        "gatehouse/engine/_kernel.pyi",
        "gatehouse/graph/_pack.pyi",
    ):
        assert needed in names, needed
    for ext in ("gatehouse/engine/_kernel.", "gatehouse/graph/_pack."):
        assert any(n.startswith(ext) and n.endswith(".so") for n in names), ext


def test_the_image_keeps_the_seed_bundles_for_the_demo() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert "cp -r bundles /usr/share/gatehouse/bundles" in text
    assert "ENV GATEHOUSE_BUNDLES=/usr/share/gatehouse/bundles" in text
