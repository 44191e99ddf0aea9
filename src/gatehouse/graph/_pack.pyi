"""Type stub of the C load packer (src/gatehouse/graph/_pack.c)."""

from collections.abc import Iterable
from typing import Any

def build(keys: object, ents: object, off: object, dat: object, /) -> int: ...
def append(
    ovl: list[Any],
    ov: dict[int, int],
    off: object,
    dat: object,
    nbase: int,
    cur: int,
    edits: bytes,
    ver: int,
    chunk: int,
    start: int,
    step: int,
    /,
) -> tuple[list[tuple[int, int]], int, int, int]: ...
def edits(net: dict[int, bool], /) -> tuple[bytes, bytes]: ...

LAYOUT: tuple[int, int, int, int]

def find(interner: object, name: str, /) -> int: ...
def carry(
    ov: dict[int, int],
    ovl: list[Any],
    oids: Iterable[int],
    since: int,
    chunk: int,
    new_ov: dict[int, int] | None = None,
    new_ovl: list[Any] | None = None,
    /,
) -> tuple[dict[int, int], list[Any], int]: ...
def shifted(dst: Any, src: Any, a: int, b: int, shift: int, /) -> None: ...
def presized(n: int, /) -> dict[int, int]: ...
