"""Seed bundles: every bundles/*/ schema compiles and answers its scenario tables in-process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenario_files import BUNDLES, load_yaml

from gatehouse.engine import Evaluator
from gatehouse.graph import Delta, GraphStore, parse_object, parse_subject, parse_tuple
from gatehouse.model import compile_schema

_load = load_yaml


def _cases() -> list[Any]:
    """One case per assertion: (bundle, test file, index, kind, row)."""
    out = []
    for b in BUNDLES:
        for tf in sorted((b / "tests").glob("*.yaml")):
            spec = _load(tf)
            base = f"{b.name}/{tf.stem}"
            for i, row in enumerate(spec.get("checks") or []):
                out.append(
                    pytest.param(b, tf, "check", row, [], id=f"{base}/check{i}:{'|'.join(row)}")
                )
            for i, row in enumerate(spec.get("lists") or []):
                rid = f"{row['subject']}|{row['permission']}|{row['resource_type']}"
                out.append(pytest.param(b, tf, "list", row, [], id=f"{base}/list{i}:{rid}"))
            for i, row in enumerate(spec.get("subjects") or []):
                rid = f"{row['resource']}|{row['permission']}|{row['subject_type']}"
                out.append(pytest.param(b, tf, "subjects", row, [], id=f"{base}/subjects{i}:{rid}"))
            steps = spec.get("steps") or []
            for s, step in enumerate(steps):
                for i, row in enumerate(step.get("checks") or []):
                    out.append(
                        pytest.param(
                            b,
                            tf,
                            "check",
                            row,
                            steps[: s + 1],
                            id=f"{base}/step{s}/check{i}:{'|'.join(row)}",
                        )
                    )
                for i, row in enumerate(step.get("lists") or []):
                    out.append(
                        pytest.param(
                            b, tf, "list", row, steps[: s + 1], id=f"{base}/step{s}/list{i}"
                        )
                    )
                for i, row in enumerate(step.get("subjects") or []):
                    out.append(
                        pytest.param(
                            b, tf, "subjects", row, steps[: s + 1], id=f"{base}/step{s}/subjects{i}"
                        )
                    )
    return out


_SCHEMAS: dict[Path, Any] = {}


def _schema(bundle: Path) -> Any:
    if bundle not in _SCHEMAS:
        text = (bundle / "schema.zed").read_text(encoding="utf-8")
        _SCHEMAS[bundle] = compile_schema(text, source=str(bundle / "schema.zed"))
    return _SCHEMAS[bundle]


def _snapshot(bundle: Path, test_file: Path, steps: list[dict[str, Any]]) -> Any:
    spec = _load(test_file)
    fixture = _load((test_file.parent / spec["fixture"]).resolve())
    st = GraphStore()
    st.load(fixture["relationships"], revision=1)
    for step in steps:
        st.apply(Delta.of(writes=step.get("write") or [], deletes=step.get("delete") or []))
    return st.current


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_schema_parses_and_manifest_is_sane(bundle: Path) -> None:
    _schema(bundle)
    manifest = _load(bundle / "manifest.yaml")
    assert manifest["name"] == bundle.name
    assert manifest["revision"] >= 1
    governed = manifest["governs"]["types"]
    assert governed
    for t in governed:
        assert _schema(bundle).has_type(t), t
    fixture = _load(bundle / "fixture.yaml")
    for text in fixture["relationships"]:
        t = parse_tuple(text)
        _schema(bundle).check_tuple(
            t.resource.type, t.relation, t.subject.type, t.subject.relation, t.subject.wildcard
        )
    GraphStore().load(fixture["relationships"], revision=1)
    assert sorted((bundle / "tests").glob("*.yaml"))


def test_all_seed_bundles_present() -> None:
    names = {b.name for b in BUNDLES}
    assert {"kontomatik", "ontra", "infosum", "importers", "aktek"} <= names


@pytest.mark.parametrize(("bundle", "test_file", "kind", "row", "steps"), _cases())
def test_scenario_row(
    bundle: Path, test_file: Path, kind: str, row: Any, steps: list[dict[str, Any]]
) -> None:
    ev = Evaluator(_schema(bundle))
    snap = _snapshot(bundle, test_file, steps)
    if kind == "check":
        subject, permission, resource, expected = row
        assert expected in ("allow", "deny"), row
        got = ev.check(snap, parse_subject(subject), permission, parse_object(resource)).allowed
        assert got == (expected == "allow"), (
            f"{subject} {permission} {resource}: expected {expected}"
        )
    elif kind == "list":
        got = ev.list_allowed(
            snap, parse_subject(row["subject"]), row["permission"], row["resource_type"]
        )
        assert got == sorted(row["expected"] or [])
    else:
        got = ev.list_subjects(
            snap, parse_object(row["resource"]), row["permission"], row["subject_type"]
        )
        assert got == sorted(row["expected"] or [])


@pytest.mark.parametrize(
    "bundle",
    [b for b in BUNDLES if (b / "gen.py").is_file()],
    ids=[b.name for b in BUNDLES if (b / "gen.py").is_file()],
)
def test_generated_files_in_sync(bundle: Path) -> None:
    """Bundles whose schema/fixture are generated from data/ must be regenerated after edits."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"gen_{bundle.name}", bundle / "gen.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (bundle / "schema.zed").read_text(encoding="utf-8") == mod.schema_text()
    assert (bundle / "fixture.yaml").read_text(encoding="utf-8") == mod.fixture_text()


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_lists_agree_with_check_on_fixture(bundle: Path) -> None:
    """For every type/member of the schema and every fixture user (plus an outsider),
    list_allowed and list_subjects return exactly what check allows."""
    sch = _schema(bundle)
    ev = Evaluator(sch)
    rels = _load(bundle / "fixture.yaml")["relationships"]
    st = GraphStore()
    snap = st.load(rels, revision=1)
    objs: set[tuple[str, str]] = set()
    users = {"user:nobody"}
    for r in rels:
        t = parse_tuple(r)
        objs.add((t.resource.type, t.resource.id))
        if t.subject.type == "user" and not t.subject.wildcard:
            users.add(f"user:{t.subject.id}")
    mismatches = []
    for ty in sorted({t for t, _ in objs}):
        ids = sorted(i for t, i in objs if t == ty)
        for member in sch.members(ty):
            allowed = {
                (u, i)
                for u in users
                for i in ids
                if ev.check(snap, parse_subject(u), member, parse_object(f"{ty}:{i}")).allowed
            }
            for u in sorted(users):
                got = ev.list_allowed(snap, parse_subject(u), member, ty)
                want = sorted(i for i in ids if (u, i) in allowed)
                if got != want:
                    mismatches.append(("list_allowed", u, member, ty, got, want))
            for i in ids:
                got = ev.list_subjects(snap, parse_object(f"{ty}:{i}"), member, "user")
                want = sorted(u for u in users if (u, i) in allowed)
                if got != want:
                    mismatches.append(("list_subjects", f"{ty}:{i}", member, got, want))
    assert not mismatches
