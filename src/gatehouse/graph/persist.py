"""Binary snapshot files: the packed indexes and the interner's tables written as they are in
memory, so that a restart loads millions of tuples in seconds instead of re-parsing text.

Layout: MAGIC, then length-prefixed sections (a JSON header; the object names joined by
newlines; the object types; the four packed arrays; the overlay groups), then the SHA-256 of
everything before it. Arrays are machine-native (the header records the byte order; another
order is refused). A file that is truncated, altered or of another version is refused as a
whole: `SnapshotFileError`, nothing loaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from typing import Any, BinaryIO

from gatehouse.graph.store import _OFF, GraphStore, Interner, Overlay, Snapshot, put_region

MAGIC = b"GHSNAP1\n"
_DIGEST = 32


class SnapshotFileError(ValueError):
    """A snapshot file that cannot be used (truncated, corrupt, foreign)."""


def dump(snap: Snapshot, out: BinaryIO, meta: dict[str, Any] | None = None) -> None:
    """Write `snap` (and `meta`, any JSON) to `out`."""
    it = snap.interner
    with it.lock:  # the tables only grow; copy a consistent prefix
        n = len(it.names)
        names = it.names[:n]
        obj_type = it.obj_type[:n]
        type_names = list(it.type_names)
        rel_names = list(it.rel_names)
    f_groups, r_groups = snap.overlay(True), snap.overlay(False)
    f_ov, r_ov = sorted(f_groups), sorted(r_groups)
    header = {
        "revision": snap.revision,
        "count": snap.count,
        "objects": n,
        "types": type_names,
        "relations": rel_names,
        "byteorder": sys.byteorder,
        "offsets": _OFF,
        "f_overlay": f_ov,
        "r_overlay": r_ov,
        "meta": meta or {},
    }
    h = hashlib.sha256()

    def section(b: bytes | memoryview) -> None:
        size = len(b).to_bytes(8, "little")
        h.update(size)
        h.update(b)
        out.write(size)
        out.write(b)

    h.update(MAGIC)
    out.write(MAGIC)
    section(json.dumps(header).encode())
    section("\n".join(names).encode())
    section(obj_type.tobytes())
    for a in (snap.f_off, snap.f_dat, snap.r_off, snap.r_dat):
        section(a.tobytes())
    for groups, oids in ((f_groups, f_ov), (r_groups, r_ov)):
        for oid in oids:
            arr, lo, hi = groups[oid]
            section(arr[lo:hi].tobytes())
    out.write(h.digest())


def header(data: bytes) -> dict[str, Any]:
    """The JSON header of a snapshot file (unchecked: for a decision before `load`)."""
    try:
        if not data.startswith(MAGIC):
            raise ValueError("no magic")
        size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
        start = len(MAGIC) + 8
        h = json.loads(data[start : start + size])
        if not isinstance(h, dict):
            raise ValueError("not an object")
        return h
    except ValueError as e:
        raise SnapshotFileError(f"not a gatehouse snapshot file ({e})") from None


def _arr(code: str, b: memoryview) -> array[int]:
    a = array(code)
    if len(b) % a.itemsize:
        raise SnapshotFileError("snapshot file: a section has a torn array")
    a.frombytes(b)
    return a


def load(store: GraphStore, data: bytes) -> tuple[Snapshot, dict[str, Any]]:
    """Load a snapshot file's bytes into an empty `store` and publish it; returns the snapshot
    and the file's `meta`. Refuses (SnapshotFileError) a bad file or a store that already
    holds data; nothing changes then."""
    if len(data) < len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        raise SnapshotFileError("not a gatehouse snapshot file")
    body, digest = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotFileError("snapshot file: checksum mismatch (truncated or altered)")
    pos = len(MAGIC)

    def section() -> memoryview:
        nonlocal pos
        if pos + 8 > len(body):
            raise SnapshotFileError("snapshot file: truncated")
        size = int.from_bytes(body[pos : pos + 8], "little")
        pos += 8
        if pos + size > len(body):
            raise SnapshotFileError("snapshot file: truncated")
        b = body[pos : pos + size]
        pos += size
        return b

    try:
        header = json.loads(bytes(section()))
        if header["byteorder"] != sys.byteorder or header["offsets"] != _OFF:
            raise SnapshotFileError("snapshot file: written on a machine of another kind")
        n = int(header["objects"])
        blob = bytes(section()).decode("utf-8")
        names = blob.split("\n") if n else []
        obj_type = _arr("H", section())
        f_off, f_dat = _arr(_OFF, section()), _arr("q", section())
        r_off, r_dat = _arr(_OFF, section()), _arr("q", section())
        f_ovl: list[array[int]] = [array("q")]
        r_ovl: list[array[int]] = [array("q")]
        f_ov = Overlay(
            (int(o), put_region(f_ovl, 0, -1, _arr("q", section()))) for o in header["f_overlay"]
        )
        r_ov = Overlay(
            (int(o), put_region(r_ovl, 0, -1, _arr("q", section()))) for o in header["r_overlay"]
        )
        types = [str(t) for t in header["types"]]
        rels = [str(r) for r in header["relations"]]
        revision, count = int(header["revision"]), int(header["count"])
    except (KeyError, TypeError, ValueError) as e:  # JSON, UTF-8, ints
        raise SnapshotFileError(f"snapshot file: malformed ({e})") from None
    if pos != len(body) or len(names) != n or len(obj_type) != n:
        raise SnapshotFileError("snapshot file: sections do not match the header")
    if len(f_off) > n + 1 or len(r_off) > n + 1 or any(t >= len(types) for t in set(obj_type)):
        raise SnapshotFileError("snapshot file: indexes do not match the objects")
    it = store.interner
    with store._write_lock, it.lock:
        if it.names or store.current.revision:
            raise SnapshotFileError("a snapshot file can only be loaded into an empty store")
        _fill(it, names, obj_type, types, rels)
        snap = Snapshot(
            it, (f_off, f_dat, f_ov, f_ovl), (r_off, r_dat, r_ov, r_ovl), revision, count
        )
        store.adopt(snap)
    return snap, dict(header.get("meta") or {})


def _fill(
    it: Interner, names: list[str], obj_type: array[int], types: list[str], rels: list[str]
) -> None:
    """Give an empty interner the loaded tables; its hash slots are rebuilt here because
    string hashes differ between processes."""
    size = 1024
    while size < 2 * (len(names) + 1):
        size *= 2
    slots = array("i", [-1]) * size
    mask = size - 1
    for o, name in enumerate(names):
        i = hash(name) & mask
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = o
    it.names = names
    it.obj_type = obj_type
    it.type_names = types
    it.type_ids = {t: i for i, t in enumerate(types)}
    it.rel_names = rels
    it.rids = {r: i for i, r in enumerate(rels)}
    it._slots = slots
    it.wildcards = {}
    for t in types:
        w = it.oid(f"{t}:*")
        if w is not None:
            it.wildcards[t] = w
