"""Interned ids, packed forward and reverse tuple indexes, immutable revisioned snapshots.

Ids. Every object string `type:id` is interned to an integer `oid` (< 2**31); every stored
relation `type#relation` to a small integer `rid` (0 means "no relation"). Keys:

    subject key   sk = oid << 12 | rid(subject relation)     user:ann -> (ann, 0)
    forward key   fk = oid << 12 | rid                        fund:f1#viewer
    reverse key   rk = sk  << 12 | rid                        user:ann, fund#viewer

Packed layout (CSR). Each index is one `array('q')` of 8-byte entries, grouped by object and
sorted within each group, plus one offsets array indexed by oid: the entries of object `o`
are `dat[off[o]:off[o + 1]]`. No per-key Python objects, so ~8 bytes per tuple per index and
nothing for the garbage collector to traverse.

    forward entry of resource oid:   rid << 44 | U << 43 | sk     (U = 1 for userset subjects)
    reverse entry of subject oid:    (srid << 12 | rid) << 32 | resource oid

So one relation's plain subjects, its usersets, or one (subject relation, relation) pair's
resources are each a contiguous run found by two bisects inside one object's group.

A snapshot is the packed base plus a versioned overlay for the objects changed since the base
was packed. The overlay is shared by consecutive snapshots and only ever appended to: `ov` (an
`Overlay`: 256 small dicts, picked by the oid's low bits) maps an oid to its newest region, a
region is `[ver, prev, n, e0 .. e(n-1)]` inside one of the `ovl` chunk arrays (packed reference
`chunk << 32 | start`), and `prev` points to the region it replaced (-1: the base). A snapshot
reads the newest region whose `ver` is not newer than its own, so a delta publishes by adding
regions and dict entries, never by copying the overlay: its cost is proportional to the delta
alone, and no step holds the GIL for long. Every table here is an int dict or an array, so the
garbage collector has nothing to traverse. Once the overlay grows, it is folded into a new
packed base on a background thread.
What a snapshot answers never changes after it is published, so readers need no locks.
"""

from __future__ import annotations

import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from itertools import chain, repeat
from operator import add, itemgetter, sub
from typing import TypeAlias, overload

from gatehouse.graph.tuples import Delta, SubjectRef, Tuple, parse_tuple

try:  # the C packer of loads and deltas; without it they run in Python (same result)
    from gatehouse.graph import _pack as _packer
except ImportError:  # pragma: no cover - installs without a C compiler
    _packer = None  # type: ignore[assignment]

REL_BITS = 12
REL_MASK = (1 << REL_BITS) - 1
MAX_RELATION_KEYS = REL_MASK  # rid 0 is reserved for "no relation"
MAX_OBJECT_ID = (1 << 31) - 1
# forward entries
F_REL = 44
F_US = 1 << 43
SK_MASK = F_US - 1
F_STEP = 1 << F_REL
# reverse entries
R_REL = 32
OID_MASK = (1 << R_REL) - 1
R_STEP = 1 << R_REL
RK_LOW = (1 << (2 * REL_BITS)) - 1
_EMPTY: array[int] = array("q")
_Index: TypeAlias = tuple[
    "array[int]", "array[int]", "Overlay", "list[array[int]]"
]  # offsets, entries, overlay refs, overlay chunks
_CHUNK = 1 << 15  # overlay entries per chunk array (bounds each append's realloc copy)
# Edits per C call of a delta's writes. Each call edits its groups with the GIL released,
# and each release costs the writer up to a switch interval to get the GIL back.
_STEP = 256
_LINK_STEP = 256  # groups per C call linking a delta's regions (1,000 took up to ~1 ms)
_GIVE_WAY = 0.05  # longest a background compaction step waits for a delta being applied
# Entries whose pages go back to the OS per step of freeing a replaced base's array (~1 MB,
# ~0.1 ms); an overlay's steps free 16 of its dicts (~2,000-5,000 groups, ~0.3 ms of
# freeing ints). Arrays under `_REAP_MIN` bytes are freed whole.
_REAP_STEP = 1 << 17
_REAP_SHARDS = 16
_REAP_MIN = 1 << 21
_REAP_WAIT = 30.0  # longest a compaction waits for readers to drop the replaced base
# Heap faulted in (GIL released) before a compaction publishes: the chunks the carry fills.
_WARM = 8 << 20
_FE_BITS = 56  # forward and reverse entries fit in 56 bits (see the layout above)
_FE_MASK = (1 << _FE_BITS) - 1
if _packer is not None and _packer.LAYOUT != (REL_BITS, F_REL, R_REL, _FE_BITS):
    _packer = None  # type: ignore[assignment]  # built for another entry layout: unused
_LITTLE = sys.byteorder == "little" and array("I").itemsize == 4
_OFF = "I"  # offsets: 4 bytes (an index holds at most 2**32 - 1 entries)
_RUN = 1 << 14  # entries or objects per C call while repacking (bounds GIL hold time)
_VISIBLE_STEP = 1 << 10  # overlay keys per C call finding what a snapshot reads (~0.2 ms)
_CARRY_STEP = 1 << 7  # groups per C call of a compaction's carry (256 took up to ~1.3 ms at 10^7)
# Overlay groups (both indexes) that trigger a compaction at most: bounds a compaction's
# work with the GIL held (finding the groups a snapshot reads, carrying the newer ones).
_MAX_OVERLAY = 1 << 15
# Dicts per overlay. A dict's table is made, doubled and freed in single calls holding the
# GIL, ~1 ms per MB of fresh pages here: one dict of 2^15 groups (a 1.3 MB table) stalled
# readers for milliseconds at each. Split 256 ways, tables stay at tens of KB.
_SHARD_BITS = 8
_SHARD_MASK = (1 << _SHARD_BITS) - 1


class Overlay:
    """An overlay's map of oid -> newest region ref, split by the oid's low `_SHARD_BITS`
    bits across `shards`, small int dicts that the C code reads directly.

    A writer only adds keys or repoints them (under the store's write lock); readers read
    lock-free, as with one dict. `keys()` and `items()` copy all shards in one C call, so
    a writer cannot change them mid-copy."""

    __slots__ = ("shards",)

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self.shards: list[dict[int, int]] = [{} for _ in range(_SHARD_MASK + 1)]
        self.update(items)

    @overload
    def get(self, oid: int) -> int | None: ...
    @overload
    def get(self, oid: int, default: int) -> int: ...
    def get(self, oid: int, default: int | None = None) -> int | None:
        return self.shards[oid & _SHARD_MASK].get(oid, default)

    def __getitem__(self, oid: int) -> int:
        return self.shards[oid & _SHARD_MASK][oid]

    def __setitem__(self, oid: int, ref: int) -> None:
        self.shards[oid & _SHARD_MASK][oid] = ref

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, int) and oid in self.shards[oid & _SHARD_MASK]

    def __len__(self) -> int:
        return sum(map(len, self.shards))

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def keys(self) -> list[int]:
        return list(chain.from_iterable(self.shards))

    def items(self) -> list[tuple[int, int]]:
        return list(chain.from_iterable(d.items() for d in self.shards))

    def update(self, items: Iterable[tuple[int, int]]) -> None:
        shards = self.shards
        for oid, ref in items:
            shards[oid & _SHARD_MASK][oid] = ref

    def pop(self, oid: int, default: int | None = None) -> int | None:
        return self.shards[oid & _SHARD_MASK].pop(oid, default)

    def link(self, refs: list[tuple[int, int]]) -> list[int | None]:
        """Point each oid of `refs` at its ref, in order; what each held before (None:
        absent). All or nothing."""
        olds: list[int | None] = []
        try:
            if _packer is not None:  # in C, a slice at a time (each call all or nothing)
                for i in range(0, len(refs), _LINK_STEP):
                    olds += _packer.link(self.shards, refs[i : i + _LINK_STEP])
            else:
                for oid, ref in refs:
                    shard = self.shards[oid & _SHARD_MASK]
                    olds.append(shard.get(oid))
                    shard[oid] = ref
        except BaseException:
            self.unlink(refs[: len(olds)], olds)
            raise
        return olds

    def unlink(self, refs: list[tuple[int, int]], olds: list[int | None]) -> None:
        """Undo `link(refs)`, which returned `olds`."""
        for (oid, _), old in reversed(list(zip(refs, olds, strict=True))):
            if old is None:
                self.pop(oid)
            else:
                self[oid] = old

    def as_dict(self) -> dict[int, int]:
        return dict(self.items())

    def nbytes(self) -> int:
        """Bytes of the dicts, their keys and their values."""
        return sys.getsizeof(self.shards) + sum(
            sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
            for d in self.shards
        )


class DeltaError(ValueError):
    """A delta that cannot be applied; nothing of it was applied."""


class Interner:
    """Append-only tables of object strings, type names and relation keys.

    Shared by every snapshot of one store. Writers hold `lock`; readers only call the
    lookup methods, lock-free: safe under the GIL because tables only grow, a name is
    appended before its slot is set, and a resized slot table replaces the old one by a
    single reference swap.

    Object names are found through an open-addressing table of oids (`array('i')`, linear
    probing on `hash(name)`, at most half full) rather than a dict: ~4-8 bytes per object
    instead of a dict entry and a boxed int (~60 bytes).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[str] = []
        self._slots: array[int] = array("i", [-1]) * 1024
        self.obj_type: array[int] = array("H")
        self.type_ids: dict[str, int] = {}
        self.type_names: list[str] = []
        self.rids: dict[str, int] = {"": 0}
        self.rel_names: list[str] = [""]
        self.wildcards: dict[str, int] = {}  # type name -> oid of "type:*"

    # lookups (lock-free) ----------------------------------------------------
    def oid(self, obj: str) -> int | None:
        if _packer is not None:
            o = _packer.find(self, obj)
            return None if o < 0 else o
        slots = self._slots
        mask = len(slots) - 1
        names = self.names
        i = hash(obj) & mask
        while True:
            o = slots[i]
            if o < 0:
                return None
            if names[o] == obj:
                return o
            i = (i + 1) & mask

    def rid(self, key: str) -> int | None:
        return self.rids.get(key)

    def name(self, oid: int) -> str:
        return self.names[oid]

    def type_of(self, oid: int) -> str:
        return self.type_names[self.obj_type[oid]]

    def nbytes(self) -> int:
        """Bytes held by the object tables (names, their strings, slots, types)."""
        names = self.names
        return (
            sys.getsizeof(names)
            + sum(map(sys.getsizeof, names))
            + sys.getsizeof(self._slots)
            + sys.getsizeof(self.obj_type)
        )

    # interning (caller holds lock) -------------------------------------------
    def intern_object(self, obj: str) -> int:
        if _packer is not None:  # most names of a delta are known: one C lookup
            o = _packer.find(self, obj)
            if o >= 0:
                return o
        slots = self._slots
        mask = len(slots) - 1
        names = self.names
        i = hash(obj) & mask
        while True:
            o = slots[i]
            if o < 0:
                break
            if names[o] == obj:
                return o
            i = (i + 1) & mask
        tname = obj.split(":", 1)[0]
        tid = self.type_ids.get(tname)
        if tid is None:
            tid = len(self.type_names)
            self.type_ids[tname] = tid
            self.type_names.append(tname)
        oid = len(names)
        if oid > MAX_OBJECT_ID:
            raise DeltaError(f"more than {MAX_OBJECT_ID + 1} distinct objects")
        names.append(obj)
        self.obj_type.append(tid)
        if 2 * (oid + 1) > len(slots):
            self._grow()
        else:
            slots[i] = oid
        if obj.endswith(":*"):
            self.wildcards[tname] = oid
        return oid

    def _grow(self) -> None:
        """Rebuild the slot table at twice the size (every name, the newest included)."""
        size = 2 * len(self._slots)
        # Built a block at a time: one `array * size` would be a single C loop of tens of
        # milliseconds at 10^7 objects, with the GIL held while readers wait.
        block = array("i", [-1]) * min(size, _RUN)
        slots = array("i")
        while len(slots) < size:
            slots.extend(block)
        mask = size - 1
        for o, name in enumerate(self.names):
            i = hash(name) & mask
            while slots[i] >= 0:
                i = (i + 1) & mask
            slots[i] = o
        self._slots = slots

    def intern_rel(self, key: str) -> int:
        rid = self.rids.get(key)
        if rid is None:
            rid = len(self.rel_names)
            if rid > MAX_RELATION_KEYS:
                raise DeltaError(f"more than {MAX_RELATION_KEYS} distinct type#relation keys")
            self.rids[key] = rid
            self.rel_names.append(key)
        return rid

    def subject_key(self, s: SubjectRef) -> int | None:
        """The subject key of `s`, or None if the graph has never seen it (holds nothing)."""
        oid = self.oid(s.object)
        if oid is None:
            return None
        if s.relation is None:
            return oid << REL_BITS
        rid = self.rids.get(f"{s.type}#{s.relation}")
        if rid is None:
            return None
        return oid << REL_BITS | rid

    def subject_str(self, sk: int) -> str:
        rid = sk & REL_MASK
        obj = self.names[sk >> REL_BITS]
        if rid == 0:
            return obj
        return f"{obj}#{self.rel_names[rid].split('#', 1)[1]}"


def contains(arr: array[int], x: int) -> bool:
    i = bisect_left(arr, x)
    return i < len(arr) and arr[i] == x


def _run(arr: array[int], lo: int, hi: int, start: int, stop: int) -> tuple[int, int]:
    a = bisect_left(arr, start, lo, hi)
    return a, bisect_left(arr, stop, a, hi)


def region(ovl: list[array[int]], v: int, ver: int) -> tuple[array[int], int, int] | None:
    """The newest region of the overlay chain starting at ref `v` that is not newer than
    `ver`, as (chunk, lo, hi); None when the base holds the group at that version."""
    while v >= 0:
        c = ovl[v >> 32]
        s = v & OID_MASK
        if c[s] <= ver:
            return c, s + 3, s + 3 + c[s + 2]
        v = c[s + 1]
    return None


class Snapshot:
    """The whole graph at one revision. What it answers never changes; share it freely.

    `f_*` is the forward index, `r_*` the reverse one: `*_off`/`*_dat` the packed base,
    `*_ov`/`*_ovl` the versioned overlay (see the module docstring), `nf`/`nr` the number of
    oids in the base, `ver` the store's internal version this snapshot reads the overlay at.
    """

    __slots__ = (
        "count",
        "f_dat",
        "f_off",
        "f_ov",
        "f_ovl",
        "interner",
        "nf",
        "nr",
        "r_dat",
        "r_off",
        "r_ov",
        "r_ovl",
        "revision",
        "ver",
    )

    def __init__(
        self,
        interner: Interner,
        f: _Index,
        r: _Index,
        revision: int,
        count: int,
        ver: int = 0,
    ) -> None:
        self.interner = interner
        self.f_off, self.f_dat, self.f_ov, self.f_ovl = f
        self.r_off, self.r_dat, self.r_ov, self.r_ovl = r
        self.nf = len(self.f_off) - 1
        self.nr = len(self.r_off) - 1
        self.revision = revision
        self.count = count
        self.ver = ver

    # object groups ------------------------------------------------------------
    def fblock(self, oid: int) -> tuple[array[int], int, int]:
        """(array, lo, hi): the forward entries of resource `oid` are array[lo:hi]."""
        v = self.f_ov.get(oid)
        if v is not None:
            got = region(self.f_ovl, v, self.ver)
            if got is not None:
                return got
        if oid < self.nf:
            off = self.f_off
            return self.f_dat, off[oid], off[oid + 1]
        return _EMPTY, 0, 0

    def rblock(self, oid: int) -> tuple[array[int], int, int]:
        """(array, lo, hi): the reverse entries of subject object `oid` are array[lo:hi]."""
        v = self.r_ov.get(oid)
        if v is not None:
            got = region(self.r_ovl, v, self.ver)
            if got is not None:
                return got
        if oid < self.nr:
            off = self.r_off
            return self.r_dat, off[oid], off[oid + 1]
        return _EMPTY, 0, 0

    def overlay(self, forward: bool = True) -> dict[int, tuple[array[int], int, int]]:
        """The groups this snapshot reads from the overlay rather than the base."""
        ov, ovl = (self.f_ov, self.f_ovl) if forward else (self.r_ov, self.r_ovl)
        out = {}
        # Iterating copies the keys first (one short C call): the writer may add some
        # meanwhile, but never removes one from an overlay a snapshot reads.
        for oid in ov:
            got = region(ovl, ov[oid], self.ver)
            if got is not None:
                out[oid] = got
        return out

    # index reads (general path) -------------------------------------------------
    def fwd(self, fk: int) -> array[int]:
        """Subject keys of the plain and wildcard subjects of `fk`, sorted."""
        arr, lo, hi = self.fblock(fk >> REL_BITS)
        if lo == hi:
            return _EMPTY
        base = (fk & REL_MASK) << F_REL
        a, b = _run(arr, lo, hi, base, base | F_US)
        if a == b:
            return _EMPTY
        return array("q", map(sub, arr[a:b], repeat(base)))

    def fus(self, fk: int) -> array[int]:
        """Subject keys of the userset subjects (`group:g#member`) of `fk`, sorted."""
        arr, lo, hi = self.fblock(fk >> REL_BITS)
        if lo == hi:
            return _EMPTY
        base = (fk & REL_MASK) << F_REL
        a, b = _run(arr, lo, hi, base | F_US, base + F_STEP)
        if a == b:
            return _EMPTY
        return array("q", map(sub, arr[a:b], repeat(base | F_US)))

    def rev(self, rk: int) -> array[int]:
        """Oids of the resources holding relation `rk & REL_MASK` to subject `rk >> 12`."""
        arr, lo, hi = self.rblock(rk >> (2 * REL_BITS))
        if lo == hi:
            return _EMPTY
        base = (rk & RK_LOW) << R_REL
        a, b = _run(arr, lo, hi, base, base + R_STEP)
        if a == b:
            return _EMPTY
        if _LITTLE and b - a > 16:
            # The oid is the low 4 bytes of each 8-byte entry: copy those out in C.
            out = array("I")
            out.frombytes(memoryview(arr[a:b]).cast("B").cast("I")[::2].tobytes())
            return out
        return array("q", map(sub, arr[a:b], repeat(base)))

    def has_entry(self, oid: int, e: int) -> bool:
        arr, lo, hi = self.fblock(oid)
        i = bisect_left(arr, e, lo, hi)
        return i < hi and arr[i] == e

    def has_tuple(self, t: Tuple) -> bool:
        it = self.interner
        oid = it.oid(str(t.resource))
        rid = it.rid(f"{t.resource.type}#{t.relation}")
        sk = it.subject_key(t.subject)
        if oid is None or rid is None or sk is None:
            return False
        return self.has_entry(oid, _fentry(rid, sk))

    def tuples(self) -> Iterator[str]:
        """Every tuple as text, in no particular order (for persistence and hashing)."""
        it = self.interner
        for oid in range(max(self.nf, max(self.f_ov.keys(), default=-1) + 1)):
            arr, lo, hi = self.fblock(oid)
            if lo == hi:
                continue
            res = it.names[oid]
            for i in range(lo, hi):
                x = arr[i]
                rel = it.rel_names[x >> F_REL].split("#", 1)[1]
                yield f"{res}#{rel}@{it.subject_str(x & SK_MASK)}"

    def nbytes(self) -> int:
        """Bytes held by the indexes (packed arrays, overlay dicts and chunks)."""
        total = 0
        for a in (self.f_off, self.f_dat, self.r_off, self.r_dat, *self.f_ovl, *self.r_ovl):
            total += sys.getsizeof(a)
        return total + self.f_ov.nbytes() + self.r_ov.nbytes()


class GraphStore:
    """Holds the current snapshot and produces the next one from a delta, atomically.

    `current` is replaced by a single attribute assignment, so a reader sees either the old
    snapshot or the new one. Writers are serialised by a lock; readers never take it.

    `switch_interval` (seconds, default 0.25 ms): while a load, delta or compaction is being
    built, the interpreter's thread switch interval is lowered to at most this, so reader
    threads sharing the GIL wait that long for it rather than Python's default 5 ms; the
    previous value is restored afterwards. None leaves the interpreter setting alone. (At
    0.5 ms a reader competing with a delta saw gaps up to 2.3-3.6 ms, at 0.25 ms up to
    0.65-0.76 ms, for the same apply time: bench/README.md, round 5.)

    Compaction (folding the overlay into a new packed base once it holds more groups than
    `min_compaction` and `compaction_ratio` of the objects, capped at 2^15 groups, or more
    entries than 1/8 of the base's) runs on a background thread when
    `background_compaction` is true, so `apply` never pays for it: the thread packs a
    snapshot's base and overlay, then, under the write lock, publishes the new base with
    the groups changed since that snapshot as its overlay (same revision, same contents),
    and then frees the replaced base a slice at a time once no snapshot holds it. Writers
    take turns (a delta throughout, a compaction one step at a time), so readers share the
    GIL with one writer at most (docs/design.md, decision 4).
    """

    def __init__(
        self,
        compaction_ratio: float = 0.125,
        min_compaction: int = 4096,
        switch_interval: float | None = 0.00025,
        background_compaction: bool = True,
    ) -> None:
        self.interner = Interner()
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self.compaction_ratio = compaction_ratio
        self.min_compaction = min_compaction
        self.switch_interval = switch_interval
        self.background_compaction = background_compaction
        self._compacting = False
        # Set while no delta is being applied: a background compaction step waits on it
        # (sleeping, so it does not compete with the delta and readers for the GIL).
        self._idle = threading.Event()
        self._idle.set()
        # Held by whichever writer is building (a delta, a load, or one step of a background
        # compaction): readers then share the GIL with one writer at most. Three threads
        # waiting for it starve each other: the GIL wakes one waiter at a time, not
        # necessarily the one that asked for the switch.
        self._turn = threading.Lock()
        # Set by a compaction that waited `_GIVE_WAY` for deltas back to back: the next delta
        # lets one step take the turn first (`_handoff` is set when it has).
        self._starved = False
        self._handoff = threading.Event()
        self._handoff.set()
        # While a background compaction runs: the oids each index's deltas linked since its
        # snapshot (what the new base must keep in its overlay), repeats included. Arrays, not
        # sets: a set's table grows by doubling into fresh pages, ~1 ms per MiB here.
        self._dirty: tuple[array[int], array[int]] | None = None
        self._compacted = threading.Event()
        self._compacted.set()
        self.compactions = 0  # new packed bases published
        self._ver = 0  # last overlay version handed out (never reused, even on failure)
        self._ov_size = 0  # overlay entries appended since the current base was packed
        self.current = Snapshot(self.interner, _empty_index(), _empty_index(), 0, 0)

    def wait_for(self, revision: int, timeout: float | None) -> Snapshot | None:
        """Block until a snapshot at `revision` or newer is current; None on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.current.revision >= revision, timeout)
        return self.current if ok else None

    def _publish(self, snap: Snapshot) -> Snapshot:
        with self._cond:
            self.current = snap
            self._cond.notify_all()
        return snap

    def load(self, tuples: Iterable[Tuple | str], revision: int) -> Snapshot:
        """Replace the whole graph (initial sync, snapshot restore). All or nothing: the
        tuples are consumed one by one (no list of parsed tuples: that temporary would
        dominate the process's memory), and an error from them — a malformed tuple, or the
        caller's validation — aborts the load before anything is published."""
        with self._write_lock, _Switch(self.switch_interval), self._writing():
            if revision < self.current.revision:
                raise DeltaError(
                    f"snapshot revision {revision} is older than current {self.current.revision}"
                )
            it = self.interner
            if _packer is not None:
                f_off, f_dat, r_off, r_dat = _load_flat(it, tuples)
            else:
                f_off, f_dat, r_off, r_dat = _load_groups(it, tuples)
            self._ver += 1
            self._ov_size = 0
            snap = Snapshot(
                it,
                (f_off, f_dat, Overlay(), [array("q")]),
                (r_off, r_dat, Overlay(), [array("q")]),
                revision,
                len(f_dat),
                self._ver,
            )
            return self._publish(snap)

    def adopt(self, snap: Snapshot) -> Snapshot:
        """Publish a snapshot built over this store's interner (a restored file)."""
        self._ver = max(self._ver, snap.ver)
        self._ov_size = sum(len(c) for c in (*snap.f_ovl, *snap.r_ovl))
        return self._publish(snap)

    def apply(self, delta: Delta, revision: int | None = None) -> Snapshot:
        """Apply `delta` as one step and return the new snapshot.

        Raises DeltaError and changes nothing when the delta cannot be applied.
        """
        with self._write_lock, _Switch(self.switch_interval), self._writing():
            return self._apply(delta, revision)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the turn for a delta or a load: a background compaction finishes its current
        step, then sleeps until this is done."""
        self._idle.clear()  # first: a compaction's next step then waits, not races for the turn
        try:
            if self._starved:
                self._handoff.wait(_GIVE_WAY)
            with self._turn:
                yield
        finally:
            self._idle.set()

    def _apply(self, delta: Delta, revision: int | None) -> Snapshot:
        """`apply` under the write lock."""
        cur = self.current
        if revision is None:
            revision = cur.revision + 1
        elif revision <= cur.revision:
            raise DeltaError(f"delta revision {revision} is not newer than {cur.revision}")
        if not delta.writes and not delta.deletes:
            return self._publish(_same(cur, revision))
        it = self.interner
        # Net effect per tuple (key: oid << 56 | forward entry): deletes, then writes.
        # Plain ints throughout, not containers per tuple or group: nothing here for a
        # garbage collection during the delta to walk.
        net: dict[int, bool] = {}
        with it.lock:
            if _packer is not None:
                # What the lookups below read of the interner's tables, read first with the
                # GIL released: at 10^7 tuples a lookup could wait ~1 ms on a cold page.
                _packer.touch_names(it, _object_names(delta))
            for t in delta.deletes:
                k = _lookup(it, t)
                if k is not None:
                    net[k[0] << _FE_BITS | _fentry(k[1], k[2])] = False
            for t in delta.writes:
                oid, rid, sk = _intern(it, t)
                net[oid << _FE_BITS | _fentry(rid, sk)] = True
        # A version no snapshot has read at: regions written with it stay invisible to
        # every published snapshot until the new one is published.
        self._ver += 1
        ver = self._ver
        if _packer is not None:
            # In C: each index's edits, then its regions (a group is read once, so
            # edits that change nothing are dropped there, and the net change counted).
            f_ed, r_ed = _packer.edits(net)
            del net
            f = (cur.f_ovl, cur.f_ov, cur.f_off, cur.f_dat, cur.nf)
            f_refs, f_size, delta_count = _append_c(*f, cur.ver, f_ed, ver)
            r = (cur.r_ovl, cur.r_ov, cur.r_off, cur.r_dat, cur.nr)
            r_refs, r_size, _ = _append_c(*r, cur.ver, r_ed, ver)
        else:
            f_refs, f_size, r_refs, r_size, delta_count = _apply_py(cur, net, ver)
        self._ov_size += f_size + r_size
        _link(cur.f_ov, f_refs, cur.r_ov, r_refs)
        if self._dirty is not None:
            self._dirty[0].extend(map(itemgetter(0), f_refs))
            self._dirty[1].extend(map(itemgetter(0), r_refs))
        count = cur.count + delta_count
        snap = Snapshot(
            it,
            (cur.f_off, cur.f_dat, cur.f_ov, cur.f_ovl),
            (cur.r_off, cur.r_dat, cur.r_ov, cur.r_ovl),
            revision,
            count,
            ver,
        )
        self._publish(snap)
        limit = self._overlay_limit(cur.nf, cur.nr)
        big = self._ov_size > max(1 << 20, (len(cur.f_dat) + len(cur.r_dat)) >> 3)
        if (big or len(cur.f_ov) + len(cur.r_ov) > limit) and not self._compacting:
            self._compacting = True
            self._compacted.clear()
            if not self.background_compaction:
                self._compact(snap, locked=True)
                return self.current
            self._dirty = (array("q"), array("q"))
            threading.Thread(
                target=self._background, args=([snap],), name="gatehouse-compact", daemon=True
            ).start()
        return snap

    def _overlay_limit(self, nf: int, nr: int) -> int:
        """Overlay groups (both indexes) past which a delta starts a compaction."""
        return max(self.min_compaction, min(_MAX_OVERLAY, int((nf + nr) * self.compaction_ratio)))

    def wait_compacted(self, timeout: float | None = None) -> bool:
        """Block until no compaction is running; False on timeout."""
        return self._compacted.wait(timeout)

    def _background(self, box: list[Snapshot]) -> None:
        """A background compaction's thread: compact, then free the replaced base. `box`
        holds the snapshot so that no frame of this thread keeps it (and its base) alive."""
        old = self._compact(box.pop())
        self._reap(old)

    def _reap(self, old: list[array[int] | Overlay]) -> None:
        """Free the replaced base's arrays and overlays a slice at a time, each slice
        holding the turn.

        Freed whole, an array is unmapped in one call with the GIL held: ~0.09 ms per MB
        here, ~7 ms for one array at 10^7 tuples. So its pages go back to the OS a slice at
        a time first (`_pack.release`; cutting the array by slices would not do: each cut
        reallocates it whole). An overlay of 2^15 groups frees its keys and values one by
        one, ~1.5 ms, so its dicts go a few at a time. It waits (up to `_REAP_WAIT` seconds)
        until `old` holds the last reference to each: snapshots read by readers keep theirs,
        and nothing that is still read is touched. Past that it lets go, and the last holder
        frees the rest whole."""
        deadline = time.monotonic() + _REAP_WAIT
        try:
            while old and time.monotonic() < deadline:
                # the list's reference and getrefcount's argument: no snapshot holds it
                free = [k for k in range(len(old)) if sys.getrefcount(old[k]) <= 2]
                if not free:
                    time.sleep(0.01)
                    continue
                item = old.pop(free[0])
                with _Switch(self.switch_interval):
                    if isinstance(item, Overlay):
                        shards = item.shards
                        while shards:
                            with self._reap_step():
                                del shards[-_REAP_SHARDS:]
                    elif _packer is not None and len(item) * item.itemsize >= _REAP_MIN:
                        for lo in range(0, len(item), _REAP_STEP):
                            with self._reap_step():
                                _packer.release(item, lo, lo + min(_REAP_STEP, len(item) - lo))
                    del item  # its pages are back with the OS: unmapping the rest is cheap
        finally:
            old.clear()

    @contextmanager
    def _reap_step(self) -> Iterator[None]:
        """One step of `_reap`: after any delta being applied, holding the turn."""
        self._idle.wait(_GIVE_WAY)
        with self._turn:
            yield

    def _compact(self, snap: Snapshot, locked: bool = False) -> list[array[int] | Overlay]:
        """Fold `snap`'s overlay into a new packed base and publish it over `current`; the
        replaced base's arrays (none if nothing was published)."""
        old: list[array[int] | Overlay] = []
        try:
            with _Switch(self.switch_interval):
                n = len(self.interner.names)
                try:
                    with _no_overflow(), nullcontext() if locked else self._turn:
                        # In the background, each step holds the turn and waits while a
                        # delta is applied: readers share the GIL with one writer at most.
                        wait = None if locked else self._give_way
                        f_off, f_dat = _repack(snap, True, n, wait)
                        r_off, r_dat = _repack(snap, False, n, wait)
                except DeltaError:
                    return old  # too big for 4-byte offsets: keep serving from the overlay
                if locked:
                    self._swap_base(snap, (f_off, f_dat), (r_off, r_dat))
                else:
                    # The carry fills the new overlay's chunks with the GIL held: fault heap
                    # pages in for them beforehand, without it.
                    if _packer is not None:
                        _packer.warm(_WARM)
                    carries = (_Carry(), _Carry())
                    self._precarry(snap, carries)
                    with self._write_lock:
                        if self._swap_base(snap, (f_off, f_dat), (r_off, r_dat), carries):
                            old = [
                                snap.f_dat,
                                snap.r_dat,
                                snap.f_off,
                                snap.r_off,
                                snap.f_ov,
                                snap.r_ov,
                            ]
                return old
        finally:
            self._dirty = None  # before a new compaction may start and set its own
            self._starved = False
            self._handoff.set()
            self._compacting = False
            self._compacted.set()

    def _give_way(self) -> None:
        """Between two steps of a background compaction (the caller holds the turn): hand the
        turn to a delta being applied and sleep until it is done. After `_GIVE_WAY` seconds of
        deltas back to back, the next delta waits for this step, so they cannot starve it."""
        self._turn.release()
        try:
            if not self._idle.wait(_GIVE_WAY):
                self._handoff.clear()
                self._starved = True
        finally:
            self._turn.acquire()
            self._starved = False
            self._handoff.set()

    def _precarry(self, snap: Snapshot, carries: tuple[_Carry, _Carry]) -> None:
        """Carry what the deltas changed since `snap` into the new base's overlay before the
        write lock is taken, a step at a time holding the turn (deltas go on between steps),
        until little is left for `_swap_base` to carry under the lock. At 10^7 tuples a
        compaction spans dozens of deltas: carried under the lock at once, a delta arriving
        then waited ~100 ms."""
        dirty = self._dirty
        if dirty is None:
            return
        with self._turn:
            budget = 64 + 4 * (len(dirty[0]) + len(dirty[1])) // _CARRY_STEP
            while budget > 0 and self.current.f_ov is snap.f_ov:
                left = sum(len(d) - c.done for d, c in zip(dirty, carries, strict=True))
                if left <= _CARRY_STEP:
                    return
                for d, c, ov, ovl in zip(
                    dirty, carries, (snap.f_ov, snap.r_ov), (snap.f_ovl, snap.r_ovl), strict=True
                ):
                    if c.step(ov, ovl, d, snap.ver):
                        budget -= 1
                        self._give_way()

    def _swap_base(
        self,
        snap: Snapshot,
        f: tuple[array[int], array[int]],
        r: tuple[array[int], array[int]],
        carries: tuple[_Carry, _Carry] | None = None,
    ) -> bool:
        """Publish the packed `f`/`r` (built from `snap`) as the base of `current`; False if
        a load replaced the graph meanwhile (this base is stale, and is dropped). `carries`:
        what `_precarry` carried already."""
        cur = self.current
        if cur.f_ov is not snap.f_ov or cur.r_ov is not snap.r_ov:
            return False
        # Groups changed after `snap` stay in a fresh overlay, newest version only: every
        # reader of the new snapshot is at least as new as all of them. The deltas since
        # recorded which (under this lock): the carry is what they changed, not the overlay.
        f_dirty, r_dirty = self._dirty or (array("q"), array("q"))
        fc, rc = carries or (_Carry(), _Carry())
        while fc.step(cur.f_ov, cur.f_ovl, f_dirty, snap.ver):
            pass
        while rc.step(cur.r_ov, cur.r_ovl, r_dirty, snap.ver):
            pass
        f_ov, f_ovl, r_ov, r_ovl = fc.ov, fc.ovl, rc.ov, rc.ovl
        self._ov_size = fc.size + rc.size
        self._publish(
            Snapshot(
                cur.interner,
                (*f, f_ov, f_ovl),
                (*r, r_ov, r_ovl),
                cur.revision,
                cur.count,
                cur.ver,
            )
        )
        self.compactions += 1
        return True


class _Switch:
    """Lower sys.getswitchinterval() to at most `interval` while any block runs.

    Writers on several threads (a delta, a background compaction, another store) overlap:
    the first to enter saves the process's interval and the last to leave restores it, so
    one finishing never raises the interval under another still running."""

    __slots__ = ("interval",)
    _lock = threading.Lock()
    _active = 0
    _saved: float | None = None

    def __init__(self, interval: float | None) -> None:
        self.interval = interval

    def __enter__(self) -> None:
        if self.interval is None:
            return
        cls = _Switch
        with cls._lock:
            cls._active += 1
            old = sys.getswitchinterval()
            lowered = self.interval < old
            if lowered:
                if cls._saved is None:
                    cls._saved = old
                sys.setswitchinterval(self.interval)
        if lowered:
            # A thread that began waiting for the GIL before this (a reader, as this thread
            # took it) waits out the interval it started with, up to 5 ms; one release wakes
            # it, and it waits again with the lowered interval.
            time.sleep(0)

    def __exit__(self, *exc: object) -> None:
        if self.interval is None:
            return
        cls = _Switch
        with cls._lock:
            cls._active -= 1
            if cls._active == 0 and cls._saved is not None:
                sys.setswitchinterval(cls._saved)
                cls._saved = None


@contextmanager
def _no_overflow() -> Iterator[None]:
    try:
        yield
    except OverflowError as e:  # a 4-byte offset overflowed
        raise DeltaError("an index would hold more than 2**32 - 1 entries") from e


def _same(cur: Snapshot, revision: int) -> Snapshot:
    return Snapshot(
        cur.interner,
        (cur.f_off, cur.f_dat, cur.f_ov, cur.f_ovl),
        (cur.r_off, cur.r_dat, cur.r_ov, cur.r_ovl),
        revision,
        cur.count,
        cur.ver,
    )


def _empty_index() -> _Index:
    return array(_OFF, [0]), array("q"), Overlay(), [array("q")]


def put_region(ovl: list[array[int]], ver: int, prev: int, group: array[int]) -> int:
    """Append a region for `group` to the last chunk (or a new one); its reference."""
    head = array("q", (ver, prev, len(group)))
    head.extend(group)
    return _put_head(ovl, head)


def _put_head(ovl: list[array[int]], region: array[int]) -> int:
    """Append a whole region (its 3-entry header included) to the last chunk or a new one."""
    c = _chunk_for(ovl, len(region))
    start = len(c)
    c.extend(region)
    return (len(ovl) - 1) << 32 | start


def _chunk_for(ovl: list[array[int]], n: int) -> array[int]:
    """The chunk a region of `n` entries goes to: the last, or a new one if it would
    overflow `_CHUNK` (a region never spans chunks; an oversized one gets its own)."""
    c = ovl[-1]
    if c and len(c) + n > _CHUNK:
        c = array("q")
        ovl.append(c)
    return c


def _append_c(
    ovl: list[array[int]],
    ov: Overlay,
    off: array[int],
    dat: array[int],
    nbase: int,
    cur: int,
    edits: bytes,
    ver: int,
) -> tuple[list[tuple[int, int]], int, int]:
    """`_packer.append` over all `edits`, in calls of about `_STEP` edits each: between two
    calls the GIL can pass to a reader (a C call cannot be interrupted)."""
    refs: list[tuple[int, int]] = []
    size = net = i = 0
    n = len(edits) >> 4
    while i < n:
        got, s, d, i = _packer.append(
            ovl, ov.shards, off, dat, nbase, cur, edits, ver, _CHUNK, i, _STEP
        )
        refs += got
        size += s
        net += d
    return refs, size, net


def _apply_py(
    cur: Snapshot, net: dict[int, bool], ver: int
) -> tuple[list[tuple[int, int]], int, list[tuple[int, int]], int, int]:
    """GraphStore.apply's writes without the C packer: (forward refs, entries, reverse refs,
    entries, net change in tuples)."""
    # Changes as `object << 64 | entry << 1 | present`, sorted: grouped by object, in entry
    # order within a group; only those that change something.
    f_ch: list[int] = []
    r_ch: list[int] = []
    count = 0
    for key, present in net.items():
        oid = key >> _FE_BITS
        e = key & _FE_MASK
        if cur.has_entry(oid, e) == present:
            continue
        count += 1 if present else -1
        sk = e & SK_MASK
        f_ch.append(oid << 64 | e << 1 | present)
        r_ch.append((sk >> REL_BITS) << 64 | _rentry(oid, e >> F_REL, sk) << 1 | present)
    f_ch.sort()
    r_ch.sort()
    f_refs, f_size = _append(cur.f_ovl, cur.f_ov, cur.fblock, f_ch, ver)
    r_refs, r_size = _append(cur.r_ovl, cur.r_ov, cur.rblock, r_ch, ver)
    return f_refs, f_size, r_refs, r_size, count


def _append(
    ovl: list[array[int]],
    ov: Overlay,
    block: Callable[[int], tuple[array[int], int, int]],
    changes: list[int],
    ver: int,
) -> tuple[list[tuple[int, int]], int]:
    """Write the groups `changes` touches (sorted `object << 64 | entry << 1 | present`),
    rebuilt from what `block` reads, as regions of version `ver`; return (oid, ref) pairs
    to link and the entries written."""
    refs: list[tuple[int, int]] = []
    size = 0
    get = ov.get
    n = len(changes)
    i = 0
    while i < n:
        oid = changes[i] >> 64
        j = bisect_left(changes, (oid + 1) << 64, i)
        arr, lo, hi = block(oid)
        # The region is built in one array, header first: copy the group after it (one C
        # call), then edit in place: removals and insertions are each a bisect and a
        # memmove, so a big group (an org's 10,000 funds) stays cheap. Removals first.
        new = array("q", (ver, get(oid, -1), 0))
        new.extend(arr[lo:hi])
        edits = changes[i:j]
        for c in edits:
            if not c & 1:
                x = (c >> 1) & _FE_MASK
                k = bisect_left(new, x, 3)
                if k < len(new) and new[k] == x:
                    del new[k]
        for c in edits:
            if c & 1:
                x = (c >> 1) & _FE_MASK
                k = bisect_left(new, x, 3)
                if k == len(new) or new[k] != x:
                    new.insert(k, x)
        new[2] = len(new) - 3
        refs.append((oid, _put_head(ovl, new)))
        size += len(new)
        i = j
    return refs, size


def _link(
    f_ov: Overlay,
    f_refs: list[tuple[int, int]],
    r_ov: Overlay,
    r_refs: list[tuple[int, int]],
) -> None:
    """Point the overlays at the new regions; all of them, or (on any error) none."""
    olds = f_ov.link(f_refs)
    try:
        r_ov.link(r_refs)
    except BaseException:
        f_ov.unlink(f_refs, olds)
        raise


class _Carry:
    """A compaction's new overlay for one index, filled in steps from the deltas' record of
    the groups they changed (`GraphStore._dirty`), in order, from `done` on."""

    __slots__ = ("done", "ov", "ovl", "size")

    def __init__(self) -> None:
        self.ov = Overlay()
        self.ovl: list[array[int]] = [array("q")]
        self.size = 0  # entries written
        self.done = 0  # how much of the record is carried

    def step(self, ov: Overlay, ovl: list[array[int]], todo: array[int], since: int) -> bool:
        """`_carry` the next `_CARRY_STEP` groups of `todo` (a C call each: readers sharing
        the GIL get it between calls); False if none was left. A group carried by an earlier
        step is carried again: the delta that recorded it again made a newer region (the
        older copy stays in the chunks, unreferenced)."""
        part = todo[self.done : self.done + _CARRY_STEP]
        if not part:
            return False
        for oid in set(part):
            self.ov.pop(oid)
        if _packer is None:
            self.size += _carry(ov, ovl, part, since, _CHUNK, self.ov, self.ovl)
        else:
            new = self.ov.shards
            self.size += _packer.carry(ov.shards, ovl, part, since, _CHUNK, new, self.ovl)
        self.done += len(part)
        return True


def _carry(
    ov: Overlay,
    ovl: list[array[int]],
    oids: Iterable[int],
    since: int,
    chunk: int,
    new_ov: Overlay,
    new_ovl: list[array[int]],
) -> int:
    """Fill the overlay `new_ov`/`new_ovl` with the newest region of each group of `oids`
    changed after version `since` (as the only one: prev -1), skipping an oid already
    there; the entries written. `chunk` is `_CHUNK` (as `_packer.carry`)."""
    size = 0
    for oid in oids:  # the caller holds the write lock: `ov` cannot change
        if oid in new_ov:
            continue
        v = ov[oid]
        c = ovl[v >> 32]
        s = v & OID_MASK
        if c[s] > since:
            n = c[s + 2]
            new_ov[oid] = put_region(new_ovl, c[s], -1, c[s + 3 : s + 3 + n])
            size += n + 3
    return size


def _fentry(rid: int, sk: int) -> int:
    return rid << F_REL | (F_US if sk & REL_MASK else 0) | sk


def _rentry(oid: int, rid: int, sk: int) -> int:
    return ((sk & REL_MASK) << REL_BITS | rid) << R_REL | oid


def _parse(t: Tuple | str) -> Tuple:
    return parse_tuple(t) if isinstance(t, str) else t


def _intern(it: Interner, t: Tuple) -> tuple[int, int, int]:
    oid = it.intern_object(f"{t.resource.type}:{t.resource.id}")
    rid = it.intern_rel(f"{t.resource.type}#{t.relation}")
    soid = it.intern_object(f"{t.subject.type}:{t.subject.id}")
    srid = it.intern_rel(f"{t.subject.type}#{t.subject.relation}") if t.subject.relation else 0
    return oid, rid, soid << REL_BITS | srid


def _object_names(delta: Delta) -> list[str]:
    """The resource and subject objects of every tuple of `delta`, as interned."""
    out = []
    for t in chain(delta.deletes, delta.writes):
        out.append(f"{t.resource.type}:{t.resource.id}")
        out.append(f"{t.subject.type}:{t.subject.id}")
    return out


def _lookup(it: Interner, t: Tuple) -> tuple[int, int, int] | None:
    oid = it.oid(f"{t.resource.type}:{t.resource.id}")
    rid = it.rid(f"{t.resource.type}#{t.relation}")
    sk = it.subject_key(t.subject)
    if oid is None or rid is None or sk is None:
        return None
    return oid, rid, sk


_Packed: TypeAlias = tuple["array[int]", "array[int]", "array[int]", "array[int]"]


def _load_flat(it: Interner, tuples: Iterable[Tuple | str]) -> _Packed:
    """Intern the tuples into flat (object, entry) arrays, 12 bytes per tuple and index, and
    pack them in C: no Python object per tuple or per object survives the loop."""
    assert _packer is not None
    fk, fe = array("i"), array("q")
    rk, re = array("i"), array("q")
    with it.lock:
        for t in tuples:
            oid, rid, sk = _intern(it, parse_tuple(t) if isinstance(t, str) else t)
            fk.append(oid)
            fe.append(_fentry(rid, sk))
            rk.append(sk >> REL_BITS)
            re.append(_rentry(oid, rid, sk))
        n = len(it.names)
    if len(fe) > 0xFFFFFFFF:
        raise DeltaError("an index would hold more than 2**32 - 1 entries")
    f_off, f_dat = _build(fk, fe, n)
    del fk, fe
    r_off, r_dat = _build(rk, re, n)
    return f_off, f_dat, r_off, r_dat


def _build(keys: array[int], ents: array[int], n: int) -> tuple[array[int], array[int]]:
    assert _packer is not None
    off = array(_OFF, [0]) * (n + 1)
    dat = array("q", [0]) * len(ents)
    del dat[_packer.build(keys, ents, off, dat) :]
    return off, dat


def _load_groups(it: Interner, tuples: Iterable[Tuple | str]) -> _Packed:
    """`_load_flat` without the C module: per-object arrays, packed in Python."""
    # Groups as arrays of 8-byte entries: no int object per entry while loading.
    fl: dict[int, array[int]] = {}
    rl: dict[int, array[int]] = {}
    with it.lock:
        for t in tuples:
            oid, rid, sk = _intern(it, parse_tuple(t) if isinstance(t, str) else t)
            g = fl.get(oid)
            if g is None:
                g = fl[oid] = array("q")
            g.append(_fentry(rid, sk))
            so = sk >> REL_BITS
            g = rl.get(so)
            if g is None:
                g = rl[so] = array("q")
            g.append(_rentry(oid, rid, sk))
        n = len(it.names)
    with _no_overflow():
        f_off, f_dat = _pack(fl, n)
        del fl
        r_off, r_dat = _pack(rl, n)
    return f_off, f_dat, r_off, r_dat


def _pack(groups: dict[int, array[int]], n: int) -> tuple[array[int], array[int]]:
    """Offsets (n + 1) and entries of `groups` (oid -> entries), each group sorted, deduped."""
    off = array(_OFF, [0])
    dat = array("q")
    get = groups.get
    for oid in range(n):
        g = get(oid)
        if g:
            if len(g) > 1:
                dat.extend(sorted(set(g)))
            else:
                dat.extend(g)
        off.append(len(dat))
    return off, dat


def _repack(
    snap: Snapshot, forward: bool, n: int, wait: Callable[[], None] | None = None
) -> tuple[array[int], array[int]]:
    """A new packed base for one index of `snap`: its base with its overlay's groups folded
    in, for n oids. It runs beside readers, so no step is one long call holding the GIL:
    `wait` (if any) runs between steps.

    In C: the overlay groups `snap` reads, as (oid, ref) pairs found a slice of keys at a
    time and sorted with the GIL released; then the new arrays, made at their final size and
    not touched (`_packer.sized`), are filled by `_packer.merge` in steps of about `_RUN`
    entries and objects, each copying with the GIL released."""
    if forward:
        off, dat, ov, ovl = snap.f_off, snap.f_dat, snap.f_ov, snap.f_ovl
    else:
        off, dat, ov, ovl = snap.r_off, snap.r_dat, snap.r_ov, snap.r_ovl
    if _packer is None or not _packer.ARRAYS_SIZED or off.typecode != "I":
        return _repack_py(off, dat, snap.overlay(forward), n, wait)
    # Deltas between two steps only add keys and regions (and never to a key listed here
    # a region the snapshot reads), so the pairs stay what `snap` reads.
    keys = ov.keys()
    pairs = array("q")
    entries = 0
    for i in range(0, len(keys), _VISIBLE_STEP):
        if wait is not None:
            wait()
        got, k = _packer.visible(ov.shards, ovl, keys[i : i + _VISIBLE_STEP], snap.ver)
        pairs.frombytes(got)
        entries += k
    del keys
    _packer.sort_pairs(pairs)
    entries += _packer.kept(off, n, pairs)
    if entries > 0xFFFFFFFF:
        raise OverflowError("an index would hold more than 2**32 - 1 entries")
    new_off = _packer.sized(off, n + 1)
    new_off[0] = 0
    new_dat = _packer.sized(dat, entries)
    i = pos = 0
    while pos < n:
        if wait is not None:
            wait()
        i, pos = _packer.merge(new_off, new_dat, off, dat, n, ovl, pairs, i, pos, _RUN)
    return new_off, new_dat


def _repack_py(
    off: array[int],
    dat: array[int],
    ov: dict[int, tuple[array[int], int, int]],
    n: int,
    wait: Callable[[], None] | None = None,
) -> tuple[array[int], array[int]]:
    """`_repack` without the C module: `off`/`dat` with the overlay's groups `ov` folded in.

    Unchanged runs of objects are copied by slices of at most `_RUN` objects and entries,
    and the overlay's objects are visited in order through a byte map (searched by `find`)
    instead of sorting its keys.
    """
    nb = len(off) - 1
    new_off = array(_OFF, [0])
    new_dat = array("q")

    def copy(a: int, b: int) -> None:
        # objects a..b-1 of the old base, unchanged
        while a < b:
            if wait is not None:
                wait()
            c = min(b, a + _RUN)
            if off[c] - off[a] > _RUN:
                c = min(c, max(a + 1, bisect_left(off, off[a] + _RUN, a + 1, c + 1) - 1))
            shift = len(new_dat) - off[a]
            new_dat.extend(dat[off[a] : off[c]])
            new_off.extend(map(add, off[a + 1 : c + 1], repeat(shift)))
            a = c

    def pad(upto: int) -> None:
        # objects interned after the base was packed, with no entries
        while (have := len(new_off) - 1) < upto:
            new_off.extend(repeat(len(new_dat), min(_RUN, upto - have)))

    marks = bytearray(n + 1)
    for oid in ov:
        marks[oid] = 1
    pos = 0
    oid = marks.find(1)
    while oid >= 0:
        if wait is not None:
            wait()
        copy(pos, min(oid, nb))
        pad(oid)
        arr, lo, hi = ov[oid]
        new_dat.extend(arr[lo:hi])
        new_off.append(len(new_dat))
        pos = oid + 1
        oid = marks.find(1, pos)
    copy(pos, nb)
    pad(n)
    return new_off, new_dat
