"""Parser and validator: accepted syntax, and every error with its position."""

from __future__ import annotations

import pytest

from gatehouse.model import (
    ArrowPlan,
    ExclusionPlan,
    IntersectionPlan,
    RelPlan,
    SchemaError,
    UnionPlan,
    compile_schema,
    parse_schema,
)

BASE = """
definition user {}
definition group {
    relation member: user | group#member
}
"""


def test_parses_all_constructs() -> None:
    s = compile_schema(
        BASE
        + """
/* block
   comment */
definition doc {
    relation owner: user // trailing comment
    relation viewer: user | user:* | group#member
    relation parent: doc
    permission view = viewer + owner + parent->view
    permission edit = (owner & viewer) - viewer
    permission none = nil
}
"""
    )
    view = s.plan("doc", "view")
    assert isinstance(view, UnionPlan)
    assert isinstance(view.children[2], ArrowPlan)
    edit = s.plan("doc", "edit")
    assert isinstance(edit, ExclusionPlan)
    assert isinstance(edit.base, IntersectionPlan)
    viewer = s.plan("doc", "viewer")
    assert isinstance(viewer, RelPlan)
    assert viewer.usersets == (("group", "member"),)
    assert viewer.wildcard_types == ("user",)


def test_operators_share_one_precedence_left_assoc() -> None:
    # As in SpiceDB: a + b - c == (a + b) - c ; a - b + c == (a - b) + c
    s = compile_schema(
        BASE
        + """
definition d {
    relation a: user
    relation b: user
    relation c: user
    permission p = a + b - c
    permission q = a - b + c
}
"""
    )
    p = s.plan("d", "p")
    assert isinstance(p, ExclusionPlan) and isinstance(p.base, UnionPlan)
    q = s.plan("d", "q")
    assert isinstance(q, UnionPlan) and isinstance(q.children[0], ExclusionPlan)


@pytest.mark.parametrize(
    ("text", "fragment", "line"),
    [
        ("definition {", "expected a type name", 1),
        ("definition a {\n relation r: nope\n}", "unknown type 'nope'", 2),
        ("definition a {\n permission p = q\n}", "has no relation or permission 'q'", 2),
        ("definition a {\n relation r: a\n relation r: a\n}", "declared twice", 3),
        ("definition a {}\ndefinition a {}", "declared twice", 2),
        ("definition a {\n permission p = p\n}", "never bottoms out", 2),
        (
            "definition a {\n relation r: a\n permission p = q + r\n permission q = p\n}",
            "never bottoms out",
            3,
        ),
        (
            "definition u {}\ndefinition a {\n relation r: u\n permission p = r->x\n}",
            "no relation or permission 'x'",
            4,
        ),
        (
            "definition u {}\ndefinition a {\n relation r: u:*\n permission p = r->x\n}",
            "wildcard",
            4,
        ),
        ("definition a {\n permission p = x->y\n}", "is unknown", 2),
        ("definition a {\n relation r: a#nope\n}", "has no 'nope'", 2),
        ("definition a {\n relation r: a\n permission p = (r\n}", "expected ')'", 4),
        ("definition a {\n relation r: a\n", "not closed", 3),
        ("definition a { relation R: a }", "expected a relation name", 1),
        ("definition a { relation r: a } $", "unexpected character", 1),
        ("/* never closed", "unterminated block comment", 1),
        (
            "definition u {}\ndefinition g {\n relation m: u | g#p\n relation b: u\n"
            " permission p = m - q\n permission q = b + m\n}",
            "subtracted side",
            5,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_errors_name_the_position(text: str, fragment: str, line: int) -> None:
    with pytest.raises(SchemaError) as exc:
        compile_schema(text, source="t.zed")
    assert fragment in str(exc.value)
    assert exc.value.line == line
    assert str(exc.value).startswith(f"t.zed:{line}:")


def test_nesting_limit_is_an_error_not_a_recursion_error() -> None:
    deep = (
        "definition a {\n relation r: a\n permission p = "
        + "(" * 100_000
        + "r"
        + ")" * 100_000
        + "\n}"
    )
    with pytest.raises(SchemaError, match="nested deeper"):
        parse_schema(deep)
    ok = "definition a {\n relation r: a\n permission p = " + "(" * 60 + "r" + ")" * 60 + "\n}"
    compile_schema(ok)


def test_oversized_schema_rejected() -> None:
    with pytest.raises(SchemaError, match="larger than"):
        parse_schema("//" + "x" * (1 << 20))
