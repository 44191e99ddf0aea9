"""The fast path (`gatehouse.server.fastpath`): Check, CheckBatch and Ping on one thread of
their own must behave exactly as on grpcio's thread pool, never block behind a waiting call,
and end with the server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gatehouse.engine import Evaluator
from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import Delta
from gatehouse.model.compiler import compile_schema
from gatehouse.server import ServerHandle, serve
from gatehouse.server.fastpath import FastPath
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SCHEMA = """
definition user {}
definition fund {
    relation viewer: user
    permission view = viewer
}
"""
SERVICE = "/gatehouse.v1.DecisionService"


def _state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "test", 1)
    state.load_data(["fund:f1#viewer@user:ann"], 1)
    return state


@pytest.fixture()
def state() -> DecisionState:
    return _state()


@pytest.fixture(params=[True, False], ids=["fast-path", "pool-only"])
def handle(state: DecisionState, request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    h = serve(state, listen="127.0.0.1:0", max_wait=5, fast_path=request.param)
    try:
        yield h
    finally:
        h.stop(0.5)


def _raw(ch: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return ch.unary_unary(
        f"{SERVICE}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def test_fast_path_is_the_default_and_ends_with_the_server() -> None:
    h = serve(_state(), listen="127.0.0.1:0")
    assert h.fast is not None
    assert any(t.name == "gatehouse-fast" for t in threading.enumerate())
    with grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
        req = pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
        assert stub.Check(req, timeout=5).allowed
        stub.Ping(pb.PingRequest(), timeout=5)
    h.stop(0.5)
    assert h.fast._thread is not None
    assert not h.fast._thread.is_alive()


def test_fallback_when_grpcio_lacks_the_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FastPath, "supported", staticmethod(lambda server: False))
    h = serve(_state(), listen="127.0.0.1:0")
    try:
        assert h.fast is None
        with grpc.insecure_channel(h.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
            req = pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
            assert stub.Check(req, timeout=5).allowed
    finally:
        h.stop(0.5)


def test_waiting_call_does_not_block_the_others(handle: ServerHandle, state: DecisionState) -> None:
    """A Check waiting for a future revision runs on the pool: meanwhile the other calls are
    answered, and the waiting one gets its answer once the revision arrives."""
    with grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
        waiting = pb.CheckRequest(
            subject="user:bob", permission="view", resource="fund:f1", at_least_revision=2
        )
        batch = pb.CheckBatchRequest(
            subjects=["user:bob"], permissions=["view"], resources=["fund:f1"], at_least_revision=2
        )
        fut = stub.Check.future(waiting, timeout=10)
        bfut = stub.CheckBatch.future(batch, timeout=10)
        time.sleep(0.2)
        assert not fut.done() and not bfut.done()
        now = pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
        t0 = time.monotonic()
        for _ in range(20):
            assert stub.Check(now, timeout=5).allowed
        assert time.monotonic() - t0 < 2.0
        assert not fut.done()
        state.apply_delta(Delta.of(writes=["fund:f1#viewer@user:bob"]))
        r = fut.result(timeout=5)
        assert r.allowed and r.revision == 2
        br = bfut.result(timeout=5)
        assert list(br.allowed) == [True] and br.revision == 2


def test_malformed_and_missing_request_messages(handle: ServerHandle) -> None:
    """The same status as grpcio's own server for a request that does not parse."""
    with grpc.insecure_channel(handle.address) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _raw(ch, "Check")(b"\xff\xff\xff", timeout=5)
        err = ei.value
        assert isinstance(err, grpc.Call)
        assert err.code() == grpc.StatusCode.INTERNAL
        assert err.details() == "Exception deserializing request!"


def test_error_details_and_deadline_on_the_fast_path(handle: ServerHandle) -> None:
    with grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as ei:
            stub.Check(pb.CheckRequest(subject="bad", permission="view", resource="fund:f1"))
        err = ei.value
        assert isinstance(err, grpc.Call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        md = dict(err.trailing_metadata() or ())
        assert "grpc-status-details-bin" in md
        # The deadline reaches the handler: a wait for a revision gives up before it.
        req = pb.CheckRequest(
            subject="user:ann", permission="view", resource="fund:f1", at_least_revision=9
        )
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Check(req, timeout=0.5)
        assert isinstance(ei.value, grpc.Call)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 2.0


def test_repeated_checks_answer_and_count_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the second call on, a Check of texts already parsed is answered from its bytes
    (`DecisionServicer._check_wire`): the same response bytes, counted the same way."""
    answered: list[bytes] = []
    wire = Evaluator.check_wire

    def counted(self: Evaluator, *args: Any) -> bytes | None:
        body = wire(self, *args)
        if body is not None:
            answered.append(body)
        return body

    monkeypatch.setattr(Evaluator, "check_wire", counted)
    h = serve(_state(), listen="127.0.0.1:0", metrics_port=0)
    try:
        with grpc.insecure_channel(h.address) as ch:
            raw = _raw(ch, "Check")
            for subject, n in (("user:ann", 3), ("user:bob", 2)):
                req = pb.CheckRequest(subject=subject, permission="view", resource="fund:f1")
                first = raw(req.SerializeToString(), timeout=5)
                assert [raw(req.SerializeToString(), timeout=5) for _ in range(n - 1)] == [
                    first
                ] * (n - 1)
                assert pb.CheckResponse.FromString(first).allowed == (subject == "user:ann")
        if Evaluator(compile_schema(SCHEMA)).native:
            assert len(answered) == 3  # every call after each pair's first
        url = f"http://127.0.0.1:{h.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        assert 'gatehouse_decisions_total{result="allow"} 3.0' in text
        assert 'gatehouse_decisions_total{result="deny"} 2.0' in text
        assert (
            'grpc_server_handled_total{grpc_code="OK",'
            'grpc_method="gatehouse.v1.DecisionService/Check"} 5.0'
        ) in text
    finally:
        h.stop(0.5)


def test_ping_answers_empty_and_other_requests(handle: ServerHandle) -> None:
    """An empty Ping is answered without building messages; a Ping with fields (unknown to
    this server's PingRequest) takes the usual way and is answered the same."""
    with grpc.insecure_channel(handle.address) as ch:
        ping = _raw(ch, "Ping")
        assert ping(b"", timeout=5) == b""
        assert ping(b"\x0a\x03abc", timeout=5) == b""
        with pytest.raises(grpc.RpcError) as ei:
            ping(b"\xff\xff\xff", timeout=5)
        assert isinstance(ei.value, grpc.Call)
        assert ei.value.code() == grpc.StatusCode.INTERNAL


def test_many_concurrent_calls(handle: ServerHandle) -> None:
    with grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
        reqs = [
            pb.CheckRequest(subject=f"user:{u}", permission="view", resource="fund:f1")
            for u in ("ann", "bob") * 100
        ]
        futs = [stub.Check.future(r, timeout=10) for r in reqs]
        got = [f.result().allowed for f in futs]
        assert got == [True, False] * 100


def test_graceful_stop_answers_a_call_in_flight() -> None:
    """stop(grace) lets a call waiting on the pool finish within the grace period."""
    state = _state()
    h = serve(state, listen="127.0.0.1:0", max_wait=5)
    with grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)  # type: ignore[no-untyped-call]
        req = pb.CheckRequest(
            subject="user:bob", permission="view", resource="fund:f1", at_least_revision=2
        )
        fut = stub.Check.future(req, timeout=10)
        time.sleep(0.2)
        threading.Timer(
            0.3, lambda: state.apply_delta(Delta.of(writes=["fund:f1#viewer@user:bob"]))
        ).start()
        h.stop(3.0)
        assert fut.result(timeout=5).allowed
    assert h.fast is not None and h.fast._thread is not None
    assert not h.fast._thread.is_alive()


@pytest.mark.parametrize(
    ("verb", "given", "expected"),
    [
        ("serve", None, "-event_engine_listener,-event_engine_for_all_other_endpoints"),
        ("serve", "mine", "mine"),
        ("check", None, None),
    ],
)
def test_serve_sets_grpc_experiments_before_grpc_loads(
    verb: str, given: str | None, expected: str | None
) -> None:
    """`gatehouse serve` turns gRPC's EventEngine listener/endpoints off (I/O on the fast
    path's thread) unless the environment says otherwise; other verbs are left alone."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if given is not None:
        env["GRPC_EXPERIMENTS"] = given
    code = (
        f"import os, sys; sys.argv = ['gatehouse', {verb!r}]; import gatehouse.cli.main; "
        "print(os.environ.get('GRPC_EXPERIMENTS'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)
