"""Seed bundles' scenario tables answered by a real gRPC server through the generated stubs.

One server per bundle (started lazily, stopped at module end). Every scenario phase (the
fixture alone, or the fixture plus steps 0..i) is set up on that server's DecisionState by
reloading the fixture at a newer revision and applying the steps' deltas; consecutive rows
of the same phase share the setup.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenario_files import BUNDLES, fixture_relationships, load_yaml, scenario_paths

from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import compile_schema
from gatehouse.server import ServerHandle, serve
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

TIMEOUT = 10.0


@dataclass(frozen=True)
class Phase:
    """A scenario file's state: the fixture plus its first `n_steps` steps."""

    bundle: Path
    test_file: Path
    n_steps: int
    checks: tuple[tuple[str, ...], ...]
    lists: tuple[dict[str, Any], ...]
    subjects: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        base = f"{self.bundle.name}/{self.test_file.stem}"
        return f"{base}/step{self.n_steps - 1}" if self.n_steps else f"{base}/base"

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list((load_yaml(self.test_file).get("steps") or [])[: self.n_steps])


def _phases() -> list[Phase]:
    out = []
    for b in BUNDLES:
        for tf in scenario_paths(b):
            spec = load_yaml(tf)
            tables = [spec, *(spec.get("steps") or [])]
            for n, t in enumerate(tables):
                out.append(
                    Phase(
                        b,
                        tf,
                        n,
                        tuple(tuple(r) for r in t.get("checks") or []),
                        tuple(t.get("lists") or []),
                        tuple(t.get("subjects") or []),
                    )
                )
    return out


PHASES = _phases()


def _row_params(kind: str) -> list[Any]:
    out = []
    for ph in PHASES:
        if kind == "check":
            for i, check in enumerate(ph.checks):
                out.append(pytest.param(ph, check, id=f"{ph.name}/check{i}:{'|'.join(check)}"))
        elif kind == "list":
            for i, lst in enumerate(ph.lists):
                rid = f"{lst['subject']}|{lst['permission']}|{lst['resource_type']}"
                out.append(pytest.param(ph, lst, id=f"{ph.name}/list{i}:{rid}"))
        else:
            for i, sub in enumerate(ph.subjects):
                rid = f"{sub['resource']}|{sub['permission']}|{sub['subject_type']}"
                out.append(pytest.param(ph, sub, id=f"{ph.name}/subjects{i}:{rid}"))
    return out


@dataclass
class Running:
    state: DecisionState
    handle: ServerHandle
    channel: grpc.Channel
    stub: pb_grpc.DecisionServiceStub
    phase: tuple[Path, int] | None = None
    revision: int = 0
    at_least: int = 0


class Servers:
    """One real server per bundle; `prepare` puts a bundle's state into a scenario phase."""

    def __init__(self) -> None:
        self._running: dict[Path, Running] = {}

    def get(self, bundle: Path) -> Running:
        if bundle not in self._running:
            manifest = load_yaml(bundle / "manifest.yaml")
            state = DecisionState()
            schema = compile_schema(
                (bundle / "schema.zed").read_text(encoding="utf-8"),
                source=str(bundle / "schema.zed"),
            )
            state.activate_policy(schema, manifest["name"], manifest["revision"])
            state.load_data(load_yaml(bundle / "fixture.yaml")["relationships"], 1)
            handle = serve(state, listen="127.0.0.1:0", cursor_key=b"s" * 32, max_wait=5)
            channel = grpc.insecure_channel(handle.address)
            stub = pb_grpc.DecisionServiceStub(channel)  # type: ignore[no-untyped-call]
            self._running[bundle] = Running(state, handle, channel, stub, None, 1)
        return self._running[bundle]

    def prepare(self, ph: Phase) -> Running:
        """Fixture reloaded at a fresh revision, then each step applied as a delta.

        Sets `revision` (the resulting data revision) and `at_least` (the revision to pass as
        at_least_revision: the newest step's revision, or 0 for the fixture alone)."""
        r = self.get(ph.bundle)
        key = (ph.test_file, ph.n_steps)
        if r.phase == key:
            return r
        r.phase = None
        snap = r.state.load_data(fixture_relationships(ph.test_file), r.revision + 1)
        rev = snap.revision
        for step in ph.steps:
            snap = r.state.apply_delta(
                Delta.of(writes=step.get("write") or [], deletes=step.get("delete") or [])
            )
            assert snap.revision == rev + 1
            rev = snap.revision
        r.revision = rev
        r.at_least = rev if ph.n_steps else 0
        r.phase = key
        return r

    def close(self) -> None:
        for r in self._running.values():
            r.channel.close()
            r.handle.stop(0.5)
        self._running.clear()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()


def _check_req(row: tuple[str, ...], at_least: int) -> pb.CheckRequest:
    subject, permission, resource, expected = row
    assert expected in ("allow", "deny"), row
    return pb.CheckRequest(
        subject=subject, permission=permission, resource=resource, at_least_revision=at_least
    )


def _strip_type(ids: list[str], resource_type: str) -> list[str]:
    prefix = f"{resource_type}:"
    assert all(i.startswith(prefix) for i in ids), ids
    return [i[len(prefix) :] for i in ids]


def _list_allowed(r: Running, row: dict[str, Any], page_size: int) -> list[str]:
    req = pb.ListAllowedRequest(
        subject=row["subject"],
        permission=row["permission"],
        resource_type=row["resource_type"],
        page_size=page_size,
        at_least_revision=r.at_least,
    )
    pages = list(r.stub.ListAllowed(req, timeout=TIMEOUT))
    assert pages, "ListAllowed streamed no page"
    assert pages[-1].next_cursor == ""
    assert all(p.next_cursor for p in pages[:-1])
    assert all(p.revision == r.revision for p in pages)
    if page_size:
        assert all(len(p.ids) <= page_size for p in pages)
    ids = [i for p in pages for i in p.ids]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    return _strip_type(ids, row["resource_type"])


@pytest.mark.parametrize(("phase", "row"), _row_params("check"))
def test_check_row(servers: Servers, phase: Phase, row: tuple[str, ...]) -> None:
    r = servers.prepare(phase)
    resp = r.stub.Check(_check_req(row, r.at_least), timeout=TIMEOUT)
    assert resp.allowed == (row[3] == "allow"), f"{' '.join(row[:3])}: expected {row[3]}"
    assert resp.revision == r.revision


@pytest.mark.parametrize(("phase", "row"), _row_params("list"))
def test_list_allowed_row(servers: Servers, phase: Phase, row: dict[str, Any]) -> None:
    r = servers.prepare(phase)
    want = sorted(row["expected"] or [])
    assert _list_allowed(r, row, 0) == want
    assert _list_allowed(r, row, 1) == want


@pytest.mark.parametrize(("phase", "row"), _row_params("subjects"))
def test_list_subjects_row(servers: Servers, phase: Phase, row: dict[str, Any]) -> None:
    r = servers.prepare(phase)
    resp = r.stub.ListSubjects(
        pb.ListSubjectsRequest(
            resource=row["resource"],
            permission=row["permission"],
            subject_type=row["subject_type"],
            at_least_revision=r.at_least,
        ),
        timeout=TIMEOUT,
    )
    assert list(resp.subjects) == sorted(row["expected"] or [])
    assert resp.revision == r.revision


_CHECK_PHASES = [pytest.param(ph, id=ph.name) for ph in PHASES if ph.checks]


@pytest.mark.parametrize("phase", _CHECK_PHASES)
def test_check_batch_matches_individual_checks(servers: Servers, phase: Phase) -> None:
    r = servers.prepare(phase)
    reqs = [_check_req(row, r.at_least) for row in phase.checks]
    single = [r.stub.Check(q, timeout=TIMEOUT) for q in reqs]
    batch = r.stub.CheckBatch(
        pb.CheckBatchRequest(checks=reqs, at_least_revision=r.at_least), timeout=TIMEOUT
    )
    assert batch.revision == r.revision
    assert len(batch.results) == len(reqs)
    assert [b.allowed for b in batch.results] == [s.allowed for s in single]
    assert [b.allowed for b in batch.results] == [row[3] == "allow" for row in phase.checks]
    assert all(b.revision == r.revision for b in batch.results)


@pytest.mark.parametrize("phase", _CHECK_PHASES)
def test_explain_agrees_with_check_rows(servers: Servers, phase: Phase) -> None:
    r = servers.prepare(phase)
    wrong = []
    for row in phase.checks:
        subject, permission, resource, expected = row
        e = r.stub.Explain(
            pb.ExplainRequest(
                subject=subject,
                permission=permission,
                resource=resource,
                at_least_revision=r.at_least,
            ),
            timeout=TIMEOUT,
        )
        assert e.revision == r.revision
        if e.allowed != (expected == "allow") or e.proof.allowed != e.allowed:
            wrong.append((row, e.allowed, e.proof.allowed))
    assert not wrong


def test_every_bundle_and_file_covered() -> None:
    files = {(ph.bundle.name, ph.test_file.name) for ph in PHASES}
    names = {b.name for b in BUNDLES}
    assert {"kontomatik", "ontra", "infosum", "importers", "aktek"} <= names
    for b in BUNDLES:
        for tf in scenario_paths(b):
            assert (b.name, tf.name) in files
