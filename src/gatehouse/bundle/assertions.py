"""Evaluate a bundle's `tests/*.yaml` assertion files in-process against its own schema.

An assertion file names a fixture (a path relative to the file) and lists rows:

* `checks`: `[subject, permission, resource, allow|deny]`
* `lists`: `{subject, permission, resource_type, expected: [ids]}`
* `subjects`: `{resource, permission, subject_type, expected: [subjects]}`
* `steps`: each `{description?, write: [...], delete: [...], checks?, lists?, subjects?}`
  applied cumulatively on top of the fixture.

`run_assertions` is pure: it takes file contents and returns one `AssertionResult` per row.
A structurally malformed file raises `BundleError` (an invalid bundle); a row whose
evaluation disagrees with its expectation, or cannot be evaluated, is a failed result.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gatehouse.bundle.errors import BundleError
from gatehouse.engine import EngineError, Evaluator
from gatehouse.graph import (
    Delta,
    DeltaError,
    GraphStore,
    InvalidReference,
    Snapshot,
    parse_object,
    parse_subject,
)
from gatehouse.model import CompiledSchema

TESTS_DIR = "tests/"


@dataclass(frozen=True, slots=True)
class AssertionResult:
    file: str
    id: str
    kind: str  # check | list | subjects
    passed: bool
    message: str = ""
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "id": self.id,
            "kind": self.kind,
            "passed": self.passed,
            "message": self.message,
            "step": self.step,
        }


def assertion_files(files: Mapping[str, bytes]) -> list[str]:
    """The assertion files of a bundle: `tests/*.yaml` (one level), sorted."""
    return sorted(
        n
        for n in files
        if n.startswith(TESTS_DIR) and n.endswith((".yaml", ".yml")) and "/" not in n[6:]
    )


def _yaml(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return yaml.safe_load(files[name].decode("utf-8"))
    except KeyError:
        raise BundleError(f"{name}: file not found in bundle") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise BundleError(f"{name}: not valid YAML: {e}") from None


def _resolve(test_file: str, ref: str) -> str:
    if not isinstance(ref, str) or not ref or ref.startswith("/"):
        raise BundleError(f"{test_file}: fixture must be a relative path, got {ref!r}")
    path = posixpath.normpath(posixpath.join(posixpath.dirname(test_file), ref))
    if path.startswith("../") or path == "..":
        raise BundleError(f"{test_file}: fixture {ref!r} escapes the bundle")
    return path


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{where}: expected a list of strings")
    return list(value)


def _rows(spec: Mapping[str, Any], key: str, where: str) -> list[Any]:
    rows = spec.get(key)
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise BundleError(f"{where}: `{key}` must be a list")
    return rows


class _Runner:
    def __init__(self, schema: CompiledSchema, files: Mapping[str, bytes]) -> None:
        self.ev = Evaluator(schema)
        self.files = files
        self.out: list[AssertionResult] = []

    def run_file(self, name: str) -> None:
        spec = _yaml(self.files, name)
        if not isinstance(spec, dict):
            raise BundleError(f"{name}: an assertion file must be a mapping")
        if "fixture" not in spec:
            raise BundleError(f"{name}: missing `fixture`")
        fixture_name = _resolve(name, spec["fixture"])
        fixture = _yaml(self.files, fixture_name)
        if not isinstance(fixture, dict):
            raise BundleError(f"{fixture_name}: a fixture must be a mapping")
        rels = _str_list(fixture.get("relationships"), f"{fixture_name}: relationships")
        store = GraphStore()
        try:
            snap = store.load(rels, revision=1)
        except (InvalidReference, DeltaError, ValueError) as e:
            raise BundleError(f"{fixture_name}: {e}") from None
        self._rows(name, spec, snap, None, "")
        for s, step in enumerate(_rows(spec, "steps", name)):
            where = f"{name}: steps[{s}]"
            if not isinstance(step, dict):
                raise BundleError(f"{where}: a step must be a mapping")
            writes = _str_list(step.get("write"), f"{where}.write")
            deletes = _str_list(step.get("delete"), f"{where}.delete")
            try:
                snap = store.apply(Delta.of(writes=writes, deletes=deletes))
            except (InvalidReference, DeltaError, ValueError) as e:
                raise BundleError(f"{where}: {e}") from None
            self._rows(name, step, snap, s, f"step{s}/")

    def _add(self, file: str, rid: str, kind: str, step: int | None, ok: bool, msg: str) -> None:
        self.out.append(AssertionResult(file, rid, kind, ok, "" if ok else msg, step))

    def _rows(
        self, name: str, spec: Mapping[str, Any], snap: Snapshot, step: int | None, prefix: str
    ) -> None:
        for i, row in enumerate(_rows(spec, "checks", name)):
            if (
                not isinstance(row, list)
                or len(row) != 4
                or not all(isinstance(x, str) for x in row)
                or row[3] not in ("allow", "deny")
            ):
                raise BundleError(
                    f"{name}: {prefix}checks[{i}] must be [subject, permission, resource, "
                    f"allow|deny], got {row!r}"
                )
            subject, permission, resource, expected = row
            rid = f"{prefix}check{i}:{'|'.join(row)}"
            try:
                got = self.ev.check(
                    snap, parse_subject(subject), permission, parse_object(resource)
                ).allowed
            except (EngineError, InvalidReference, ValueError) as e:
                self._add(name, rid, "check", step, False, f"error: {e}")
                continue
            ok = got == (expected == "allow")
            actual = "allow" if got else "deny"
            msg = f"{subject} {permission} {resource}: expected {expected}, got {actual}"
            self._add(name, rid, "check", step, ok, msg)
        for i, row in enumerate(_rows(spec, "lists", name)):
            keys = ("subject", "permission", "resource_type")
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in keys):
                raise BundleError(f"{name}: {prefix}lists[{i}] needs {', '.join(keys)}")
            want = sorted(_str_list(row.get("expected"), f"{name}: {prefix}lists[{i}].expected"))
            rid = f"{prefix}list{i}:{row['subject']}|{row['permission']}|{row['resource_type']}"
            try:
                got_ids = self.ev.list_allowed(
                    snap, parse_subject(row["subject"]), row["permission"], row["resource_type"]
                )
            except (EngineError, InvalidReference, ValueError) as e:
                self._add(name, rid, "list", step, False, f"error: {e}")
                continue
            self._add(
                name, rid, "list", step, list(got_ids) == want, f"expected {want}, got {got_ids}"
            )
        for i, row in enumerate(_rows(spec, "subjects", name)):
            keys = ("resource", "permission", "subject_type")
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in keys):
                raise BundleError(f"{name}: {prefix}subjects[{i}] needs {', '.join(keys)}")
            want = sorted(_str_list(row.get("expected"), f"{name}: {prefix}subjects[{i}].expected"))
            rid = f"{prefix}subjects{i}:{row['resource']}|{row['permission']}|{row['subject_type']}"
            try:
                got_subjects = self.ev.list_subjects(
                    snap, parse_object(row["resource"]), row["permission"], row["subject_type"]
                )
            except (EngineError, InvalidReference, ValueError) as e:
                self._add(name, rid, "subjects", step, False, f"error: {e}")
                continue
            self._add(
                name,
                rid,
                "subjects",
                step,
                list(got_subjects) == want,
                f"expected {want}, got {got_subjects}",
            )


def run_assertions(schema: CompiledSchema, files: Mapping[str, bytes]) -> list[AssertionResult]:
    """Evaluate every `tests/*.yaml` file in `files`; one result per row, in file order."""
    runner = _Runner(schema, files)
    for name in assertion_files(files):
        runner.run_file(name)
    return runner.out
