"""Type stub of the C load packer (src/gatehouse/graph/_pack.c)."""

from collections.abc import Iterable
from typing import Any

def build(keys: object, ents: object, off: object, dat: object, /) -> int: ...
def append(
    ovl: list[Any],
    shards: list[dict[int, int]],
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
    shards: list[dict[int, int]],
    ovl: list[Any],
    oids: Iterable[int],
    since: int,
    chunk: int,
    new_shards: list[dict[int, int]],
    new_ovl: list[Any],
    /,
) -> int: ...
def touch_names(interner: object, names: list[str], /) -> None: ...
def link(shards: list[dict[int, int]], refs: list[tuple[int, int]], /) -> list[int | None]: ...
def visible(
    shards: list[dict[int, int]], ovl: list[Any], oids: Iterable[int], ver: int, /
) -> tuple[bytes, int]: ...
def sort_pairs(pairs: Any, /) -> None: ...
def merge(
    new_off: Any,
    new_dat: Any,
    off: Any,
    dat: Any,
    n: int,
    ovl: list[Any],
    pairs: Any,
    i: int,
    pos: int,
    budget: int,
    /,
) -> tuple[int, int]: ...
def sized(template: Any, n: int, /) -> Any: ...
def kept(off: Any, n: int, pairs: Any, /) -> int: ...

ARRAYS_SIZED: bool

def release(arr: Any, start: int, stop: int, /) -> None: ...
def warm(nbytes: int, /) -> None: ...
