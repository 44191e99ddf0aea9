"""The decision log end to end: fields, masking, no metadata, and drops instead of blocking."""

from __future__ import annotations

import json
import pathlib
import threading

import grpc

from gatehouse.engine.state import DecisionState
from gatehouse.model.compiler import compile_schema
from gatehouse.observability import DecisionLog
from gatehouse.server import serve
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SCHEMA = """
definition user {}
definition fund {
    relation owner: user
    permission view = owner
}
"""


def _state() -> DecisionState:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "funds", 3)
    state.load_data(["fund:f1#owner@user:ann"], 7)
    return state


def test_log_fields_masking_and_no_metadata(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "decisions.jsonl"
    handle = serve(
        _state(),
        listen="127.0.0.1:0",
        decision_log=str(path),
        decision_log_mask=["subject"],
        decision_cache_size=4,
    )
    try:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            md = (("authorization", "Bearer sekrit-token"),)
            r1 = stub.Check(
                pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1"),
                metadata=md,
            )
            r2 = stub.Check(
                pb.CheckRequest(subject="user:bob", permission="view", resource="fund:f1"),
                metadata=md,
            )
            stub.CheckBatch(
                pb.CheckBatchRequest(
                    checks=[
                        pb.CheckRequest(subject="user:ann", permission="view", resource="fund:f1")
                    ]
                )
            )
            assert r1.allowed and not r2.allowed
    finally:
        handle.stop(0.5)
    text = path.read_text()
    assert "sekrit" not in text and "authorization" not in text
    assert "user:ann" not in text and "user:bob" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [e["method"] for e in lines] == ["Check", "Check", "CheckBatch"]
    assert [e["allowed"] for e in lines] == [True, False, True]
    first = lines[0]
    assert first["subject"] == "***"
    assert first["resource"] == "fund:f1"
    assert first["permission"] == "view"
    assert first["data_revision"] == 7
    assert first["policy_revision"] == 3
    assert first["policy_name"] == "funds"
    assert first["reason"]
    assert first["timestamp"]
    assert len({e["decision_id"] for e in lines}) == 3


class _BlockingSink:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait()
        self.lines.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def test_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink = _BlockingSink()
    drops: list[int] = []
    log = DecisionLog(sink, queue_size=2, on_drop=lambda: drops.append(1))  # type: ignore[arg-type]

    def rec(i: int) -> None:
        log.record("Check", f"user:u{i}", "view", "fund:f1", True, "owner", 1, 1, "p")

    rec(0)
    assert sink.entered.wait(10)  # the writer holds entry 0 and is blocked in the sink
    for i in range(1, 11):
        rec(i)  # never blocks: the queue holds 2, older entries are dropped
    assert log.dropped == 8
    assert len(drops) == 8
    sink.release.set()
    log.close()
    subjects = [json.loads(s)["subject"] for s in sink.lines]
    assert subjects == ["user:u0", "user:u9", "user:u10"]
