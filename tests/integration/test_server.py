"""The gRPC server end to end: a real server on 127.0.0.1, called through generated stubs."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import compile_schema
from gatehouse.server import SERVICE_NAME, ServerHandle, serve
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
}
"""

TUPLES = [
    "group:eng#member@user:bob",
    "fund:f2#viewer@group:eng#member",
    "fund:f1#owner@user:ann",
    *[f"fund:g{i:02d}#viewer@user:ann" for i in range(20)],
]
ANN_VIEW = sorted(["fund:f1", *[f"fund:g{i:02d}" for i in range(20)]])


def _state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "test", 1)
    state.load_data(TUPLES, 1)
    return state


@pytest.fixture()
def state() -> DecisionState:
    return _state()


@pytest.fixture(params=[True, False], ids=["fast-path", "pool-only"])
def server(state: DecisionState, request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """Every test through the server runs twice: Check/CheckBatch/Ping on the fast path (the
    default) and everything on grpcio's thread pool; clients must not see a difference."""
    handle = serve(
        state,
        listen="127.0.0.1:0",
        metrics_port=0,
        cursor_key=b"k" * 32,
        max_wait=5,
        fast_path=request.param,
    )
    assert (handle.fast is not None) is request.param
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
    return pb_grpc.DecisionServiceStub(channel)


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    err = excinfo.value
    assert isinstance(err, grpc.Call)
    return err.code()


def test_check_allow_and_deny(stub: pb_grpc.DecisionServiceStub) -> None:
    r = stub.Check(pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1"))
    assert r.allowed and r.revision == 1 and r.policy_revision == 1 and r.reason
    r = stub.Check(pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f2"))
    assert r.allowed and "group:eng#member" in r.reason
    r = stub.Check(pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f1"))
    assert not r.allowed and r.reason == "no_path"


def test_batch(stub: pb_grpc.DecisionServiceStub) -> None:
    reqs = [
        pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1"),
        pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f1"),
        pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f2"),
    ]
    r = stub.CheckBatch(pb.CheckBatchRequest(checks=reqs))
    assert [x.allowed for x in r.results] == [True, False, True]
    assert r.revision == 1
    too_many = pb.CheckBatchRequest(checks=[reqs[0]] * 1001)
    with pytest.raises(grpc.RpcError) as ei:
        stub.CheckBatch(too_many)
    assert _code(ei) == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad = pb.CheckBatchRequest(checks=[reqs[0], pb.CheckRequest(subject="nope", resource="x")])
    with pytest.raises(grpc.RpcError) as ei:
        stub.CheckBatch(bad)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def _list_all(stub: pb_grpc.DecisionServiceStub, page_size: int) -> list[str]:
    """Page one message at a time, resuming from each page's cursor with a new RPC."""
    out: list[str] = []
    cursor = ""
    for _ in range(100):
        req = pb.ListAllowedRequest(
            subject="user:ann",
            permission="view",
            resource_type="fund",
            page_size=page_size,
            cursor=cursor,
        )
        call = stub.ListAllowed(req)
        page = next(iter(call))
        call.cancel()
        assert len(page.ids) <= page_size
        out.extend(page.ids)
        cursor = page.next_cursor
        if not cursor:
            return out
    raise AssertionError("pagination did not terminate")


@pytest.mark.parametrize("page_size", [1, 2, 7])
def test_list_allowed_pagination(stub: pb_grpc.DecisionServiceStub, page_size: int) -> None:
    assert _list_all(stub, page_size) == ANN_VIEW
    # one streamed RPC yields every page too
    req = pb.ListAllowedRequest(
        subject="user:ann", permission="view", resource_type="fund", page_size=page_size
    )
    pages = list(stub.ListAllowed(req))
    assert [i for p in pages for i in p.ids] == ANN_VIEW
    assert pages[-1].next_cursor == "" and all(p.next_cursor for p in pages[:-1])


def test_tampered_cursor(stub: pb_grpc.DecisionServiceStub) -> None:
    req = pb.ListAllowedRequest(
        subject="user:ann", permission="view", resource_type="fund", page_size=2
    )
    cursor = next(iter(stub.ListAllowed(req))).next_cursor
    assert cursor
    tampered = cursor[:-3] + ("AAA" if cursor[-3:] != "AAA" else "BBB")
    for bad in (tampered, "garbage!", cursor + "x"):
        with pytest.raises(grpc.RpcError) as ei:
            list(
                stub.ListAllowed(
                    pb.ListAllowedRequest(
                        subject="user:ann", permission="view", resource_type="fund", cursor=bad
                    )
                )
            )
        assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT
    # a cursor minted for another query is refused as well
    with pytest.raises(grpc.RpcError) as ei:
        list(
            stub.ListAllowed(
                pb.ListAllowedRequest(
                    subject="user:bob", permission="view", resource_type="fund", cursor=cursor
                )
            )
        )
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_list_subjects_and_explain(stub: pb_grpc.DecisionServiceStub) -> None:
    r = stub.ListSubjects(
        pb.ListSubjectsRequest(resource="fund:f2", permission="view", subject_type="user")
    )
    assert list(r.subjects) == ["user:bob"] and r.revision == 1
    e = stub.Explain(pb.ExplainRequest(subject="user:bob", permission="view", resource="fund:f2"))
    assert e.allowed and e.proof.allowed and e.proof.children


@pytest.mark.parametrize(
    "req",
    [
        pb.CheckRequest(subject="user ann", permission="view", resource="fund:f1"),
        pb.CheckRequest(subject="user:ann", permission="view", resource="fund"),
        pb.CheckRequest(subject="user:ann", permission="nope", resource="fund:f1"),
        pb.CheckRequest(subject="user:ann", permission="view", resource="nosuch:f1"),
    ],
    ids=["malformed-subject", "malformed-resource", "unknown-permission", "unknown-type"],
)
def test_invalid_argument(stub: pb_grpc.DecisionServiceStub, req: pb.CheckRequest) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        stub.Check(req)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_status_and_ping(stub: pb_grpc.DecisionServiceStub) -> None:
    s = stub.Status(pb.StatusRequest())
    assert (s.policy_name, s.policy_revision, s.data_revision, s.ready) == ("test", 1, 1, True)
    assert stub.Ping(pb.PingRequest()) == pb.PingResponse()


def _health(channel: grpc.Channel, service: str = "") -> int:
    hs = health_pb2_grpc.HealthStub(channel)
    return int(hs.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)


def _wait_health(channel: grpc.Channel, want: int) -> int:
    got = -1
    for _ in range(100):
        got = _health(channel)
        if got == want:
            break
        time.sleep(0.02)
    return got


def test_not_ready_then_ready() -> None:
    state = DecisionState()
    handle = serve(state, listen="127.0.0.1:0")
    try:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _health(ch, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as ei:
                stub.Check(
                    pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
                )
            assert _code(ei) == grpc.StatusCode.UNAVAILABLE
            assert not stub.Status(pb.StatusRequest()).ready
            state.activate_policy(compile_schema(SCHEMA), "test", 1)
            state.load_data(TUPLES, 1)
            assert _wait_health(ch, health_pb2.HealthCheckResponse.SERVING) == (
                health_pb2.HealthCheckResponse.SERVING
            )
            r = stub.Check(
                pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
            )
            assert r.allowed
    finally:
        handle.stop(0.5)


def test_at_least_revision(stub: pb_grpc.DecisionServiceStub, state: DecisionState) -> None:
    req = pb.CheckRequest(
        subject="user:bob", permission="view", resource="fund:f1", at_least_revision=2
    )
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Check(req, timeout=0.3)
    assert _code(ei) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2.0

    def later() -> None:
        time.sleep(0.3)
        state.apply_delta(Delta.of(writes=["fund:f1#viewer@user:bob"]))

    t = threading.Thread(target=later)
    t.start()
    try:
        r = stub.Check(req, timeout=5)
    finally:
        t.join()
    assert r.allowed and r.revision == 2
    # already satisfied: answers at once
    assert stub.Check(req, timeout=1).allowed


def test_metrics_endpoint(stub: pb_grpc.DecisionServiceStub, server: ServerHandle) -> None:
    stub.Check(pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1"))
    with pytest.raises(grpc.RpcError):
        stub.Check(pb.CheckRequest(subject="bad", permission="view", resource="fund:f1"))
    list(
        stub.ListAllowed(
            pb.ListAllowedRequest(subject="user:ann", permission="view", resource_type="fund")
        )
    )
    assert server.metrics_port
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    assert "grpc_server_handled_total" in text
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="gatehouse.v1.DecisionService/Check"}'
        in text
    )
    assert 'grpc_code="INVALID_ARGUMENT"' in text
    assert 'grpc_method="gatehouse.v1.DecisionService/ListAllowed"' in text
    assert "grpc_server_handling_seconds_bucket" in text
    assert 'gatehouse_decisions_total{result="allow"} 1.0' in text
    assert "gatehouse_data_revision 1.0" in text
    assert "gatehouse_policy_revision 1.0" in text
    assert "user:ann" not in text and "fund:f1" not in text


def test_cli_check_subprocess(server: ServerHandle) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatehouse.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = cli("check", "--addr", server.address, "user:ann", "view", "fund:f1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "allow"
    assert r.stdout.split()[1] == "1"
    r = cli("check", "--addr", server.address, "user:bob", "view", "fund:f1")
    assert r.returncode == 0 and r.stdout.split()[0] == "deny"
    r = cli("check", "--addr", server.address, "user:bob", "nope", "fund:f1")
    assert r.returncode != 0 and "INVALID_ARGUMENT" in r.stderr and r.stdout == ""
    r = cli(
        "list-allowed", "--addr", server.address, "--page-size", "3", "user:ann", "view", "fund"
    )
    assert r.returncode == 0 and r.stdout.split() == ANN_VIEW


def test_unix_socket(state: DecisionState, tmp_path: pathlib.Path) -> None:
    sock = tmp_path / "gh.sock"
    handle = serve(state, listen=None, unix=str(sock), reflection_enabled=False)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            r = stub.Check(
                pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
            )
            assert r.allowed
    finally:
        handle.stop(0.5)


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    rs = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(iter(rs.ServerReflectionInfo(iter([req]), timeout=5)))
    names = {s.name for s in resp.list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


@pytest.mark.slow
def test_cli_serve_sigterm(tmp_path: pathlib.Path) -> None:
    schema = tmp_path / "funds.zed"
    schema.write_text(SCHEMA)
    tuples = tmp_path / "tuples.txt"
    tuples.write_text("# comment\n\n" + "\n".join(TUPLES) + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatehouse.cli.main",
            "serve",
            "--schema",
            str(schema),
            "--tuples",
            str(tuples),
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving" in line, line
        addr = line.split()[2].rstrip(",")
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            s = stub.Status(pb.StatusRequest(), timeout=5)
            assert (s.policy_name, s.ready) == ("funds", True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_capped_by_server_is_failed_precondition(state: DecisionState) -> None:
    handle = serve(state, listen="127.0.0.1:0", max_wait=0.2)
    try:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            req = pb.CheckRequest(
                subject="user:ann", permission="view", resource="fund:f1", at_least_revision=9
            )
            with pytest.raises(grpc.RpcError) as ei:
                stub.Check(req, timeout=10)
            assert _code(ei) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        handle.stop(0.5)


def test_depth_exceeded_is_an_error_not_an_allow() -> None:
    state = DecisionState(max_depth=3)
    state.activate_policy(compile_schema(SCHEMA), "test", 1)
    chain = [f"group:g{i}#member@group:g{i + 1}#member" for i in range(10)]
    state.load_data([*chain, "group:g10#member@user:deep", "fund:f9#viewer@group:g0#member"], 1)
    handle = serve(state, listen="127.0.0.1:0")
    try:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            req = pb.CheckRequest(subject="user:deep", permission="view", resource="fund:f9")
            with pytest.raises(grpc.RpcError) as ei:
                stub.Check(req, timeout=5)
            assert _code(ei) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        handle.stop(0.5)
