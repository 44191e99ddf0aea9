"""Errors carry a google.rpc.ErrorInfo reason a client can branch on (and never an allow)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gatehouse.engine import DecisionState
from gatehouse.model import compile_schema
from gatehouse.server.app import serve
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc

SCHEMA = """
definition user {}
definition doc {
    relation viewer: user
    permission read = viewer
}
"""


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.DecisionServiceStub]:
    state = DecisionState()
    state.activate_policy(compile_schema(SCHEMA), "t", 1)
    state.load_data(["doc:a#viewer@user:ann"], 1)
    handle = serve(state, listen="127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            yield pb_grpc.DecisionServiceStub(ch)
    finally:
        handle.stop(0)


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "gatehouse.dev"
            return str(info.reason)
    raise AssertionError("no ErrorInfo detail")


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (pb.CheckRequest(subject="user:ann x", permission="read", resource="doc:a"),
         grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ID"),
        (pb.CheckRequest(subject="user:ann", permission="nope", resource="doc:a"),
         grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TYPE_OR_PERMISSION"),
        (pb.CheckRequest(subject="user:ann", permission="read", resource="memo:a"),
         grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TYPE_OR_PERMISSION"),
        (pb.CheckRequest(subject="user:ann", permission="read", resource="doc:a",
                         at_least_revision=99),
         grpc.StatusCode.DEADLINE_EXCEEDED, "REVISION_NOT_REACHED"),
    ],
    ids=["malformed-id", "unknown-permission", "unknown-type", "future-revision"],
)  # fmt: skip
def test_check_errors_have_reasons(
    stub: pb_grpc.DecisionServiceStub, request_: pb.CheckRequest, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Check(request_, timeout=0.5)
    assert exc.value.code() == code
    assert _reason(exc.value) == reason


def test_batch_limit_reason(stub: pb_grpc.DecisionServiceStub) -> None:
    one = pb.CheckRequest(subject="user:ann", permission="read", resource="doc:a")
    with pytest.raises(grpc.RpcError) as exc:
        stub.CheckBatch(pb.CheckBatchRequest(checks=[one] * 1001), timeout=5)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(exc.value) == "BATCH_TOO_LARGE"


def test_cursor_tampering_reason(stub: pb_grpc.DecisionServiceStub) -> None:
    req = pb.ListAllowedRequest(
        subject="user:ann", permission="read", resource_type="doc", cursor="AAAA" * 10
    )
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.ListAllowed(req, timeout=5))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(exc.value) == "INVALID_CURSOR"
