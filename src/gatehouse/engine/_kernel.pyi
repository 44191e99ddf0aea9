"""Type stub of the C kernel (src/gatehouse/engine/_kernel.c)."""

from collections.abc import Callable, Sequence
from typing import Any

class Program:
    def __init__(
        self,
        nodes: Sequence[tuple[int, int, int, int, str, str, list[int], list[int]]],
        relkind: bytes,
        names: list[str],
        obj_type: object,
        subject_str: Callable[[int], str],
        rel_parts: list[str],
        fallback: type[BaseException],
        depth_error: type[BaseException],
        depth_message: str,
        closure_rids: list[int],
        max_depth: int,
    ) -> None: ...
    def closure(self, snap: object, sk: int, wk: int, /) -> tuple[set[int], bool]: ...
    def bind(
        self,
        interner: object,
        nkeys: int,
        entries: dict[str, dict[str, int]],
        types: frozenset[str],
        decision: type[tuple[bool, int, str]],
        /,
    ) -> None: ...
    def check(
        self, snap: object, subject: object, permission: str, resource: object, closures: object, /
    ) -> Any: ...
    def check_wire(
        self,
        payload: bytes,
        snap: object,
        closures: object,
        subjects: dict[str, Any],
        resources: dict[str, Any],
        policy_revision: int,
        cells: list[Any] | None,
        /,
    ) -> bytes | None: ...
    def revs(self, snap: object, oids: bytes, srel: int, rid: int, /) -> bytes: ...
    def nested(self, snap: object, seeds: bytes, rid: int, /) -> bytes: ...

def union(sets: list[bytes], /) -> bytes: ...
def intersect(a: bytes, b: bytes, /) -> bytes: ...
def names(names: list[str], oids: bytes, cut: int, /) -> list[str]: ...
