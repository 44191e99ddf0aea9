"""The engine's wire check (`Evaluator.check_wire`, the server's hot path for Check): from a
serialized CheckRequest to a serialized CheckResponse in one C call.

Whatever it answers must be byte for byte what the usual path sends (decode the request,
`check`, build and serialize the response), and it must decline (None) everything else:
requests the usual path rejects, texts the caller has not parsed, subjects with a relation,
a revision to wait for, unknown fields, bytes that are not a CheckRequest at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_packed_core import COMPILED, SETTINGS, UNSEEN, _objects, graphs

from gatehouse.engine import EngineError, Evaluator
from gatehouse.graph import GraphStore, InvalidReference, Snapshot, parse_object, parse_subject
from gatehouse.graph.tuples import ObjectRef, SubjectRef
from gatehouse.v1 import decision_pb2 as pb

if not Evaluator(COMPILED).native:  # pragma: no cover - a build without a C compiler
    pytest.skip("the C kernel is not built", allow_module_level=True)

REVISIONS = st.sampled_from([0, 1, 7, 300, 2**40, 2**63 - 1])
ANY_INT64 = st.one_of(REVISIONS, st.sampled_from([-1, -(2**63)]))


class Caches:
    """What the server keeps: the references its parser accepted, by text."""

    def __init__(self) -> None:
        self.subjects: dict[str, SubjectRef] = {}
        self.resources: dict[str, ObjectRef] = {}

    def parse(self, subject: str, resource: str) -> tuple[SubjectRef, ObjectRef] | None:
        try:
            s, r = parse_subject(subject), parse_object(resource)
        except InvalidReference:
            return None
        self.subjects[subject], self.resources[resource] = s, r
        return s, r


def usual(
    ev: Evaluator, snap: Snapshot, subject: str, perm: str, resource: str, policy_revision: int
) -> bytes | None:
    """The usual path's response bytes, None for an error."""
    try:
        d = ev.check(snap, parse_subject(subject), perm, parse_object(resource))
    except (EngineError, InvalidReference):
        return None
    return pb.CheckResponse(
        allowed=d.allowed, revision=d.revision, reason=d.reason, policy_revision=policy_revision
    ).SerializeToString()


def request(subject: str, perm: str, resource: str, at_least: int = 0) -> bytes:
    return pb.CheckRequest(
        subject=subject, permission=perm, resource=resource, at_least_revision=at_least
    ).SerializeToString()


@SETTINGS
@given(tuples=graphs(), revision=REVISIONS, policy_revision=ANY_INT64)
def test_wire_check_answers_as_the_usual_path(
    tuples: list[str], revision: int, policy_revision: int
) -> None:
    snap = GraphStore().load(tuples, revision=revision)
    ev = Evaluator(COMPILED)
    caches = Caches()
    subjects = [*_objects(tuples, "user:"), UNSEEN, "user:*", "group:g0#member", "user:bad id"]
    resources = [*_objects(tuples, "fund:"), *_objects(tuples, "org:"), "fund:never", "nope:x"]
    perms = ["read", "write", "viewer", "view_all", "admin", "nope"]
    answered = 0
    for s in subjects:
        for r in resources:
            for p in perms:
                want = usual(ev, snap, s, p, r, policy_revision)  # also refreshes the closures
                payload = request(s, p, r)
                cells = [0, 0]
                if caches.parse(s, r) is None:
                    # never parsed: not the wire path's to answer
                    assert ev.check_wire(payload, snap, {}, {}, policy_revision, cells) is None
                    continue
                got = ev.check_wire(
                    payload, snap, caches.subjects, caches.resources, policy_revision, cells
                )
                if got is None:
                    # declined: an error, a relation, or what the kernel does not cover
                    assert cells == [0, 0]
                    continue
                assert want is not None, (s, p, r)
                assert got == want, (s, p, r, got, want)
                allowed = pb.CheckResponse.FromString(got).allowed
                assert cells == ([1, 0] if allowed else [0, 1])
                answered += 1
                # texts the caller never parsed are declined, whatever they are
                assert ev.check_wire(payload, snap, caches.subjects, {}, 0, None) is None
                assert ev.check_wire(payload, snap, {}, caches.resources, 0, None) is None
    # the compiled permissions on plain subjects are all answered here
    plain = [s for s in subjects if "#" not in s and " " not in s]
    real = [r for r in resources if not r.startswith("nope:")]
    assert answered >= len(plain) * len(real) * 2


def _base() -> tuple[Evaluator, Snapshot, Caches, bytes]:
    tuples = ["fund:f1#viewer@user:ann", "fund:f1#org@org:o1", "org:o1#admin@user:bob"]
    snap = GraphStore().load(tuples, revision=3)
    ev = Evaluator(COMPILED)
    caches = Caches()
    for s in ("user:ann", "user:bob", "user:cy", "group:g0#member"):
        caches.parse(s, "fund:f1")
    assert usual(ev, snap, "user:ann", "read", "fund:f1", 5) is not None
    return ev, snap, caches, request("user:ann", "read", "fund:f1")


def test_wire_check_declines_what_it_does_not_take() -> None:
    ev, snap, c, good = _base()

    def wire(payload: bytes) -> bytes | None:
        return ev.check_wire(payload, snap, c.subjects, c.resources, 5, None)

    assert wire(good) == usual(ev, snap, "user:ann", "read", "fund:f1", 5)
    assert wire(request("user:bob", "read", "fund:f1")) is not None  # through the org
    assert wire(request("user:cy", "read", "fund:f1")) == usual(
        ev, snap, "user:cy", "read", "fund:f1", 5
    )
    declined = [
        request("user:ann", "read", "fund:f1", at_least=2),  # a revision to wait for
        request("group:g0#member", "read", "fund:f1"),  # a userset subject
        request("user:ann", "nope", "fund:f1"),  # unknown permission: the usual path's error
        request("user:ann", "", "fund:f1"),  # missing fields
        request("", "read", "fund:f1"),
        request("user:ann", "read", ""),
        good + b"\x2a\x01x",  # an unknown field
        good + good[:10],  # a field given twice
        good[:-1],  # cut short
        b"\xff\xff\xff",
        b"",
    ]
    for payload in declined:
        assert wire(payload) is None, payload
    # a stale closure table (another snapshot) is declined, not answered from
    other = GraphStore().load(["fund:f1#viewer@user:ann"], revision=4)
    assert ev.check_wire(good, other, c.subjects, c.resources, 5, None) is None
    with pytest.raises(TypeError):
        ev.check_wire(good, snap, c.subjects, c.resources, 5, [])  # no cells to count in


@SETTINGS
@given(data=st.binary(max_size=80), cut=st.integers(0, 60), extra=st.binary(max_size=12))
def test_wire_check_on_arbitrary_bytes(data: bytes, cut: int, extra: bytes) -> None:
    """Any bytes: never an exception, and an answer only where the usual path gives the same."""
    ev, snap, c, good = _base()
    for payload in (data, good[:cut] + extra, extra + good, good + extra):
        got = ev.check_wire(payload, snap, c.subjects, c.resources, 5, None)
        if got is None:
            continue
        req = pb.CheckRequest.FromString(payload)
        assert req.at_least_revision == 0
        want = usual(ev, snap, req.subject, req.permission, req.resource, 5)
        assert got == want
