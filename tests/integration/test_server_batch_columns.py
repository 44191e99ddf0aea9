"""The columnar CheckBatch form and the registration-time metrics, through a real server."""

from __future__ import annotations

import gc
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import compile_schema
from gatehouse.server import ServerHandle, serve
from gatehouse.server.app import freeze_heap_once
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SCHEMA = """
definition user {}
definition group {
    relation member: user | group#member
}
definition fund {
    relation owner: user
    relation viewer: user | group#member
    permission view = viewer + owner
    permission manage = owner
}
"""

TUPLES = [
    "group:eng#member@user:bob",
    "fund:f2#viewer@group:eng#member",
    "fund:f1#owner@user:ann",
    *[f"fund:g{i:02d}#viewer@user:ann" for i in range(20)],
]


@pytest.fixture()
def state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "test", 3)
    state.load_data(TUPLES, 7)
    return state


@pytest.fixture()
def server(state: DecisionState) -> Iterator[ServerHandle]:
    handle = serve(state, listen="127.0.0.1:0", metrics_port=0, max_workers=4, max_wait=5)
    try:
        yield handle
    finally:
        handle.stop(0.5)


@pytest.fixture()
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture()
def stub(channel: grpc.Channel) -> pb_grpc.DecisionServiceStub:
    return pb_grpc.DecisionServiceStub(channel)  # type: ignore[no-untyped-call]


SUBJECTS = ["user:ann", "user:bob", "user:bob", "user:ann", "user:carl", "user:ann"]
RESOURCES = ["fund:f1", "fund:f1", "fund:f2", "fund:g07", "fund:f1", "fund:nope"]


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo detail")


def _fails(
    stub: pb_grpc.DecisionServiceStub, req: pb.CheckBatchRequest, code: grpc.StatusCode
) -> str:
    with pytest.raises(grpc.RpcError) as ei:
        stub.CheckBatch(req, timeout=5)
    err = ei.value
    assert isinstance(err, grpc.Call)
    assert err.code() == code
    return _reason(ei.value)


def test_columns_answer_like_check(stub: pb_grpc.DecisionServiceStub) -> None:
    r = stub.CheckBatch(
        pb.CheckBatchRequest(subjects=SUBJECTS, permissions=["view"], resources=RESOURCES),
        timeout=5,
    )
    singles = [
        stub.Check(pb.CheckRequest(subject=s, permission="view", resource=o), timeout=5)
        for s, o in zip(SUBJECTS, RESOURCES, strict=True)
    ]
    assert list(r.allowed) == [c.allowed for c in singles]
    assert list(r.allowed) == [True, False, True, True, False, False]
    assert r.revision == 7 and r.policy_revision == 3
    assert not r.results and not r.reasons  # columnar answers only, reasons not asked for


def test_columns_per_check_permissions_and_reasons(stub: pb_grpc.DecisionServiceStub) -> None:
    perms = ["view", "manage", "view", "manage", "view", "view"]
    r = stub.CheckBatch(
        pb.CheckBatchRequest(
            subjects=SUBJECTS, permissions=perms, resources=RESOURCES, with_reasons=True
        ),
        timeout=5,
    )
    singles = [
        stub.Check(pb.CheckRequest(subject=s, permission=p, resource=o), timeout=5)
        for s, p, o in zip(SUBJECTS, perms, RESOURCES, strict=True)
    ]
    assert list(r.allowed) == [c.allowed for c in singles]
    assert list(r.reasons) == [c.reason for c in singles]
    assert list(r.allowed) == [True, False, True, False, False, False]
    assert r.revision == 7


def test_nested_form_still_works(stub: pb_grpc.DecisionServiceStub) -> None:
    checks = [
        pb.CheckRequest(subject=s, permission="view", resource=o)
        for s, o in zip(SUBJECTS, RESOURCES, strict=True)
    ]
    r = stub.CheckBatch(pb.CheckBatchRequest(checks=checks), timeout=5)
    assert [x.allowed for x in r.results] == [True, False, True, True, False, False]
    assert all(x.revision == 7 and x.policy_revision == 3 for x in r.results)
    assert r.revision == 7 and not r.allowed


@pytest.mark.parametrize(
    "req",
    [
        pb.CheckBatchRequest(subjects=["user:ann"], permissions=["view"], resources=[]),
        pb.CheckBatchRequest(subjects=["user:ann"], permissions=[], resources=["fund:f1"]),
        pb.CheckBatchRequest(
            subjects=["user:ann"] * 3, permissions=["view"] * 2, resources=["fund:f1"] * 3
        ),
        pb.CheckBatchRequest(permissions=["view"] * 2),
        pb.CheckBatchRequest(
            checks=[pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")],
            subjects=["user:ann"],
            permissions=["view"],
            resources=["fund:f1"],
        ),
    ],
    ids=["no-resources", "no-permissions", "short-permissions", "only-permissions", "both-forms"],
)
def test_bad_shapes_are_invalid_argument(
    stub: pb_grpc.DecisionServiceStub, req: pb.CheckBatchRequest
) -> None:
    assert _fails(stub, req, grpc.StatusCode.INVALID_ARGUMENT) == "INVALID_BATCH"


def test_column_errors_are_errors_not_denies(stub: pb_grpc.DecisionServiceStub) -> None:
    bad = pb.CheckBatchRequest(
        subjects=["user:ann", "nope"], permissions=["view"], resources=["fund:f1", "fund:f1"]
    )
    assert _fails(stub, bad, grpc.StatusCode.INVALID_ARGUMENT) == "MALFORMED_ID"
    unknown = pb.CheckBatchRequest(subjects=["user:ann"], permissions=["x"], resources=["fund:f1"])
    assert _fails(stub, unknown, grpc.StatusCode.INVALID_ARGUMENT) == ("UNKNOWN_TYPE_OR_PERMISSION")
    big = pb.CheckBatchRequest(
        subjects=["user:ann"] * 1001, permissions=["view"], resources=["fund:f1"] * 1001
    )
    assert _fails(stub, big, grpc.StatusCode.RESOURCE_EXHAUSTED) == "BATCH_TOO_LARGE"
    future = pb.CheckBatchRequest(
        subjects=["user:ann"], permissions=["view"], resources=["fund:f1"], at_least_revision=99
    )
    with pytest.raises(grpc.RpcError) as ei:
        stub.CheckBatch(future, timeout=0.5)
    assert _reason(ei.value) == "REVISION_NOT_REACHED"


def test_columns_see_new_data(stub: pb_grpc.DecisionServiceStub, state: DecisionState) -> None:
    req = pb.CheckBatchRequest(subjects=["user:carl"], permissions=["view"], resources=["fund:f1"])
    assert list(stub.CheckBatch(req, timeout=5).allowed) == [False]
    state.apply_delta(Delta.of(writes=["fund:f1#viewer@user:carl"]), 8)
    req.at_least_revision = 8
    r = stub.CheckBatch(req, timeout=5)
    assert list(r.allowed) == [True] and r.revision == 8


def test_parse_cache_does_not_change_answers(stub: pb_grpc.DecisionServiceStub) -> None:
    # The same texts again and again, valid and invalid, answer the same every time.
    for _ in range(3):
        r = stub.Check(
            pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f2"), timeout=5
        )
        assert r.allowed and r.revision == 7
        with pytest.raises(grpc.RpcError) as ei:
            stub.Check(
                pb.CheckRequest(subject="user:bob x", permission="view", resource="fund:f2"),
                timeout=5,
            )
        assert _reason(ei.value) == "MALFORMED_ID"


def _metrics(server: ServerHandle) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_recorded_per_method(
    stub: pb_grpc.DecisionServiceStub, channel: grpc.Channel, server: ServerHandle
) -> None:
    for _ in range(3):
        stub.Ping(pb.PingRequest(), timeout=5)
    stub.CheckBatch(
        pb.CheckBatchRequest(subjects=SUBJECTS, permissions=["view"], resources=RESOURCES),
        timeout=5,
    )
    _fails(
        stub,
        pb.CheckBatchRequest(subjects=["user:ann"], permissions=["view"], resources=[]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    health = health_pb2_grpc.HealthStub(channel)
    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    unknown = channel.unary_unary(
        "/gatehouse.v1.DecisionService/Nope",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError):
        unknown(b"", timeout=5)
    text = _metrics(server)
    svc = "gatehouse.v1.DecisionService"
    handled = "grpc_server_handled_total"
    assert _value(text, f'{handled}{{grpc_code="OK",grpc_method="{svc}/Ping"}}') == 3.0
    assert _value(text, f'{handled}{{grpc_code="OK",grpc_method="{svc}/CheckBatch"}}') == 1.0
    assert (
        _value(text, f'{handled}{{grpc_code="INVALID_ARGUMENT",grpc_method="{svc}/CheckBatch"}}')
        == 1.0
    )
    assert _value(text, f'{handled}{{grpc_code="OK",grpc_method="grpc.health.v1.Health/Check"}}')
    assert _value(text, f'grpc_server_handling_seconds_count{{grpc_method="{svc}/Ping"}}') == 3.0
    assert "Nope" not in text
    # Batch items are decisions; the malformed batch is one error.
    assert _value(text, 'gatehouse_decisions_total{result="allow"}') == 3.0
    assert _value(text, 'gatehouse_decisions_total{result="deny"}') == 3.0
    assert _value(text, 'gatehouse_decisions_total{result="error"}') == 1.0


ANN_VIEW = sorted(["fund:f1", *[f"fund:g{i:02d}" for i in range(20)]])


@pytest.mark.parametrize("page_size", [1, 4, 7, 21, 22, 0])
def test_list_allowed_stream_pages_and_resume(
    stub: pb_grpc.DecisionServiceStub, page_size: int
) -> None:
    req = pb.ListAllowedRequest(
        subject="user:ann", permission="view", resource_type="fund", page_size=page_size
    )
    pages = list(stub.ListAllowed(req, timeout=5))
    size = page_size or 1000
    assert [i for p in pages for i in p.ids] == ANN_VIEW
    assert all(len(p.ids) == min(size, 21 - k * size) for k, p in enumerate(pages))
    assert all(p.revision == 7 for p in pages)
    assert [bool(p.next_cursor) for p in pages] == [True] * (len(pages) - 1) + [False]
    for k, p in enumerate(pages[:-1]):  # resuming from any page's cursor streams the rest
        req.cursor = p.next_cursor
        rest = [i for q in stub.ListAllowed(req, timeout=5) for i in q.ids]
        assert rest == ANN_VIEW[(k + 1) * size :]


def test_heap_frozen_once_ready(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):  # the health thread freezes before it reports SERVING
        r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        if r.status == health_pb2.HealthCheckResponse.SERVING:
            break
        threading.Event().wait(0.05)
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    assert gc.get_freeze_count() > 0
    assert freeze_heap_once() is False  # once per process


def test_columns_with_decision_log_and_cache(state: DecisionState, tmp_path: Path) -> None:
    # Logging and the decision cache take the general path: same answers, one entry per check.
    path = tmp_path / "decisions.jsonl"
    handle = serve(
        state, listen="127.0.0.1:0", decision_log=str(path), decision_cache_size=8, max_workers=2
    )
    try:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
            req = pb.CheckBatchRequest(
                subjects=SUBJECTS, permissions=["view"], resources=RESOURCES, with_reasons=True
            )
            first = stub.CheckBatch(req, timeout=5)
            again = stub.CheckBatch(req, timeout=5)  # from the cache
    finally:
        handle.stop(0.5)
    assert list(first.allowed) == list(again.allowed) == [True, False, True, True, False, False]
    assert list(first.reasons) == list(again.reasons)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 * len(SUBJECTS)
    assert {e["method"] for e in lines} == {"CheckBatch"}
    assert [e["allowed"] for e in lines[: len(SUBJECTS)]] == list(first.allowed)
    assert [e["subject"] for e in lines[: len(SUBJECTS)]] == SUBJECTS
