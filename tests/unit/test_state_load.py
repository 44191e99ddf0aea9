"""Loading a whole graph is all or nothing, also now that tuples are consumed one by one."""

from __future__ import annotations

import pytest

from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import InvalidReference
from gatehouse.model.compiler import compile_schema
from gatehouse.model.errors import SchemaError

SCHEMA = compile_schema("definition user {}\ndefinition doc { relation viewer: user }\n")


def state() -> DecisionState:
    st = DecisionState()
    st.activate_policy(SCHEMA, "t", 1, "d")
    st.load_data(["doc:a#viewer@user:x"], 5)
    return st


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("doc:b#owner@user:y", SchemaError),  # refused by the policy
        ("doc:b#viewer@group:g#member", SchemaError),
        ("not a tuple", InvalidReference),
    ],
)
def test_a_bad_tuple_in_the_middle_changes_nothing(bad: str, error: type[Exception]) -> None:
    st = state()
    before = st.store.current
    tuples = [f"doc:d{i}#viewer@user:u{i}" for i in range(1000)]
    tuples.insert(500, bad)
    with pytest.raises(error):
        st.load_data(tuples, 9)
    assert st.store.current is before
    assert set(st.store.current.tuples()) == {"doc:a#viewer@user:x"}


def test_a_generator_is_consumed_once() -> None:
    st = state()
    st.load_data((f"doc:d{i}#viewer@user:u{i % 7}" for i in range(300)), 6)
    assert st.store.current.revision == 6 and st.store.current.count == 300
