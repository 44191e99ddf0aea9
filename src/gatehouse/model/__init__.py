"""The schema language: parse, validate and compile to evaluation plans. Pure: no I/O."""

from gatehouse.model.ast import Schema
from gatehouse.model.compiler import (
    ArrowPlan,
    CallPlan,
    CompiledSchema,
    ExclusionPlan,
    IntersectionPlan,
    NilPlan,
    Plan,
    RelPlan,
    UnionPlan,
    compile_schema,
)
from gatehouse.model.errors import SchemaError
from gatehouse.model.parser import parse_schema

__all__ = [
    "ArrowPlan",
    "CallPlan",
    "CompiledSchema",
    "ExclusionPlan",
    "IntersectionPlan",
    "NilPlan",
    "Plan",
    "RelPlan",
    "Schema",
    "SchemaError",
    "UnionPlan",
    "compile_schema",
    "parse_schema",
]
