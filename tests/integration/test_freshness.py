"""Health follows data freshness: NOT_SERVING once the data is older than `max_data_age`."""

from __future__ import annotations

import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.engine.state import DecisionState
from gatehouse.model.compiler import compile_schema
from gatehouse.server import SERVICE_NAME, Freshness, serve
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SCHEMA = """
definition user {}
definition fund {
    relation owner: user
    permission view = owner
}
"""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "test", 1)
    state.load_data(["fund:f1#owner@user:ann"], 1)
    return state


class Clock:
    """A settable monotonic clock, so the test decides when the data has aged."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_health(channel: grpc.Channel, want: int, service: str = "") -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 20
    got = None
    while time.monotonic() < deadline:
        got = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"health stayed {got}, wanted {want}")


def test_stale_data_is_not_serving_until_touched() -> None:
    clock = Clock()
    fresh = Freshness(clock)
    fresh.touch()
    handle = serve(_state(), listen="127.0.0.1:0", metrics_port=0, freshness=fresh, max_data_age=30)
    try:
        assert handle.freshness is fresh
        with grpc.insecure_channel(handle.address) as ch:
            _wait_health(ch, SERVING)
            stub = pb_grpc.DecisionServiceStub(ch)
            s = stub.Status(pb.StatusRequest(), timeout=5)
            assert s.data_fresh and s.data_age_seconds == 0.0
            clock.now += 31  # no delta, no heartbeat for longer than the limit
            _wait_health(ch, NOT_SERVING)
            _wait_health(ch, NOT_SERVING, SERVICE_NAME)
            s = stub.Status(pb.StatusRequest(), timeout=5)
            assert not s.data_fresh and s.data_age_seconds == 31.0
            assert s.ready  # policy and data are loaded; they are only too old
            url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            assert "gatehouse_data_age_seconds 31.0" in text
            fresh.touch()  # e.g. a feed heartbeat
            _wait_health(ch, SERVING)
            _wait_health(ch, SERVING, SERVICE_NAME)
            assert stub.Status(pb.StatusRequest(), timeout=5).data_fresh
    finally:
        handle.stop(0.5)


def test_never_confirmed_data_is_not_serving_with_a_limit() -> None:
    handle = serve(_state(), listen="127.0.0.1:0", max_data_age=3600)
    try:
        with grpc.insecure_channel(handle.address) as ch:
            _wait_health(ch, NOT_SERVING)
            s = pb_grpc.DecisionServiceStub(ch).Status(pb.StatusRequest(), timeout=5)
            assert s.data_age_seconds == -1.0 and not s.data_fresh
            handle.freshness.touch()
            _wait_health(ch, SERVING)
    finally:
        handle.stop(0.5)


def test_without_a_limit_age_is_reported_but_health_ignores_it() -> None:
    clock = Clock()
    fresh = Freshness(clock)
    fresh.touch()
    handle = serve(_state(), listen="127.0.0.1:0", freshness=fresh)
    try:
        clock.now += 10**6
        with grpc.insecure_channel(handle.address) as ch:
            _wait_health(ch, SERVING)
            s = pb_grpc.DecisionServiceStub(ch).Status(pb.StatusRequest(), timeout=5)
            assert s.data_fresh and s.data_age_seconds == 10**6
    finally:
        handle.stop(0.5)
