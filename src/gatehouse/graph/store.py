"""Interned ids, forward and reverse tuple indexes, immutable revisioned snapshots and deltas.

Layout. Every object string `type:id` is interned to an integer `oid`; every stored relation
`type#relation` to a small integer `rid` (0 means "no relation"). Three integer keys follow:

    subject key   sk = oid << 12 | rid(subject relation)     user:ann -> (ann, 0)
    forward key   fk = oid << 12 | rid                        fund:f1#viewer
    reverse key   rk = sk  << 12 | rid                        user:ann, fund#viewer

Indexes map a key to a sorted `array('q')` (8 bytes per entry, no per-entry objects):
    fwd[fk] -> subject keys of plain and wildcard subjects
    fus[fk] -> subject keys of usersets (`group:g#member`), kept apart so a check never scans
               plain subjects to find the usersets to expand
    rev[rk] -> oids of the resources holding that relation to that subject

A snapshot is a large immutable base layer plus a small overlay of replaced arrays; a delta
copies only the overlay, and the overlay is folded into a new base once it grows.
Snapshots never change after construction, so readers need no locks.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gatehouse.graph.tuples import Delta, SubjectRef, Tuple, parse_tuple

REL_BITS = 12
REL_MASK = (1 << REL_BITS) - 1
MAX_RELATION_KEYS = REL_MASK  # rid 0 is reserved for "no relation"
_EMPTY: array[int] = array("q")


class DeltaError(ValueError):
    """A delta that cannot be applied; nothing of it was applied."""


class Interner:
    """Append-only tables of object strings, type names and relation keys.

    Shared by every snapshot of one store. Writers hold `lock`; readers only call the
    lookup methods, which are single dict reads and so safe under the GIL.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.oids: dict[str, int] = {}
        self.names: list[str] = []
        self.obj_type: array[int] = array("H")
        self.type_ids: dict[str, int] = {}
        self.type_names: list[str] = []
        self.rids: dict[str, int] = {"": 0}
        self.rel_names: list[str] = [""]

    # lookups (lock-free) ----------------------------------------------------
    def oid(self, obj: str) -> int | None:
        return self.oids.get(obj)

    def rid(self, key: str) -> int | None:
        return self.rids.get(key)

    def name(self, oid: int) -> str:
        return self.names[oid]

    def type_of(self, oid: int) -> str:
        return self.type_names[self.obj_type[oid]]

    # interning (caller holds lock) -------------------------------------------
    def intern_object(self, obj: str) -> int:
        oid = self.oids.get(obj)
        if oid is None:
            tname = obj.split(":", 1)[0]
            tid = self.type_ids.get(tname)
            if tid is None:
                tid = len(self.type_names)
                self.type_ids[tname] = tid
                self.type_names.append(tname)
            oid = len(self.names)
            self.names.append(obj)
            self.obj_type.append(tid)
            self.oids[obj] = oid
        return oid

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
        oid = self.oids.get(s.object)
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


@dataclass(frozen=True, slots=True)
class Layer:
    fwd: dict[int, array[int]]
    fus: dict[int, array[int]]
    rev: dict[int, array[int]]

    @staticmethod
    def empty() -> Layer:
        return Layer({}, {}, {})

    def size(self) -> int:
        return len(self.fwd) + len(self.fus) + len(self.rev)


def contains(arr: array[int], x: int) -> bool:
    i = bisect_left(arr, x)
    return i < len(arr) and arr[i] == x


class Snapshot:
    """The whole graph at one revision. Immutable; share it freely between threads."""

    __slots__ = ("_base", "_ov", "count", "interner", "revision")

    def __init__(
        self, interner: Interner, base: Layer, overlay: Layer, revision: int, count: int
    ) -> None:
        self.interner = interner
        self._base = base
        self._ov = overlay
        self.revision = revision
        self.count = count

    # index reads: overlay first, then base ------------------------------------
    def fwd(self, fk: int) -> array[int]:
        v = self._ov.fwd.get(fk)
        if v is None:
            v = self._base.fwd.get(fk, _EMPTY)
        return v

    def fus(self, fk: int) -> array[int]:
        v = self._ov.fus.get(fk)
        if v is None:
            v = self._base.fus.get(fk, _EMPTY)
        return v

    def rev(self, rk: int) -> array[int]:
        v = self._ov.rev.get(rk)
        if v is None:
            v = self._base.rev.get(rk, _EMPTY)
        return v

    def has_tuple(self, t: Tuple) -> bool:
        it = self.interner
        oid = it.oid(str(t.resource))
        rid = it.rid(f"{t.resource.type}#{t.relation}")
        sk = it.subject_key(t.subject)
        if oid is None or rid is None or sk is None:
            return False
        fk = oid << REL_BITS | rid
        return contains(self.fus(fk) if sk & REL_MASK else self.fwd(fk), sk)

    def tuples(self) -> Iterator[str]:
        """Every tuple as text, in no particular order (for persistence and hashing)."""
        it = self.interner
        for index in ("fwd", "fus"):
            keys = set(getattr(self._base, index)) | set(getattr(self._ov, index))
            for fk in keys:
                arr = getattr(self, index)(fk)
                if not arr:
                    continue
                res = it.names[fk >> REL_BITS]
                rel = it.rel_names[fk & REL_MASK].split("#", 1)[1]
                for sk in arr:
                    yield f"{res}#{rel}@{it.subject_str(sk)}"


class GraphStore:
    """Holds the current snapshot and produces the next one from a delta, atomically.

    `current` is replaced by a single attribute assignment, so a reader sees either the old
    snapshot or the new one. Writers are serialised by a lock; readers never take it.
    """

    def __init__(self, compaction_ratio: float = 0.125, min_compaction: int = 4096) -> None:
        self.interner = Interner()
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self.compaction_ratio = compaction_ratio
        self.min_compaction = min_compaction
        self.current = Snapshot(self.interner, Layer.empty(), Layer.empty(), 0, 0)

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
        """Replace the whole graph (initial sync, snapshot restore). All or nothing."""
        parsed = [_parse(t) for t in tuples]
        with self._write_lock:
            if revision < self.current.revision:
                raise DeltaError(
                    f"snapshot revision {revision} is older than current {self.current.revision}"
                )
            fwd: dict[int, list[int]] = {}
            fus: dict[int, list[int]] = {}
            rev: dict[int, list[int]] = {}
            it = self.interner
            seen: set[tuple[int, int]] = set()
            with it.lock:
                for t in parsed:
                    oid, rid, sk = _intern(it, t)
                    fk = oid << REL_BITS | rid
                    if (fk, sk) in seen:
                        continue
                    seen.add((fk, sk))
                    (fus if sk & REL_MASK else fwd).setdefault(fk, []).append(sk)
                    rev.setdefault(sk << REL_BITS | rid, []).append(oid)
            del seen
            base = Layer(_freeze(fwd), _freeze(fus), _freeze(rev))
            count = sum(len(a) for a in base.fwd.values()) + sum(len(a) for a in base.fus.values())
            return self._publish(Snapshot(it, base, Layer.empty(), revision, count))

    def apply(self, delta: Delta, revision: int | None = None) -> Snapshot:
        """Apply `delta` as one step and return the new snapshot.

        Raises DeltaError and changes nothing when the delta cannot be applied.
        """
        with self._write_lock:
            cur = self.current
            if revision is None:
                revision = cur.revision + 1
            elif revision <= cur.revision:
                raise DeltaError(f"delta revision {revision} is not newer than {cur.revision}")
            if not delta.writes and not delta.deletes:
                return self._publish(
                    Snapshot(self.interner, cur._base, cur._ov, revision, cur.count)
                )
            it = self.interner
            # fk -> (adds, removes) for fwd/fus; rk -> (adds, removes) for rev
            f_ch: dict[int, tuple[set[int], set[int]]] = {}
            u_ch: dict[int, tuple[set[int], set[int]]] = {}
            r_ch: dict[int, tuple[set[int], set[int]]] = {}
            delta_count = 0
            # Net effect per tuple: deletes first, then writes.
            net: dict[tuple[int, int, int], bool] = {}
            with it.lock:
                for t in delta.deletes:
                    k = _lookup(it, t)
                    if k is not None:
                        net[k] = False
                for t in delta.writes:
                    net[_intern(it, t)] = True
            for (oid, rid, sk), present in net.items():
                fk = oid << REL_BITS | rid
                is_us = bool(sk & REL_MASK)
                exists = contains(cur.fus(fk) if is_us else cur.fwd(fk), sk)
                if exists == present:
                    continue
                slot = 0 if present else 1
                delta_count += 1 if present else -1
                (u_ch if is_us else f_ch).setdefault(fk, (set(), set()))[slot].add(sk)
                r_ch.setdefault(sk << REL_BITS | rid, (set(), set()))[slot].add(oid)
            ov = Layer(dict(cur._ov.fwd), dict(cur._ov.fus), dict(cur._ov.rev))
            _merge(ov.fwd, cur.fwd, f_ch)
            _merge(ov.fus, cur.fus, u_ch)
            _merge(ov.rev, cur.rev, r_ch)
            base = cur._base
            if ov.size() > max(self.min_compaction, int(base.size() * self.compaction_ratio)):
                base, ov = _compact(base, ov), Layer.empty()
            return self._publish(Snapshot(it, base, ov, revision, cur.count + delta_count))


def _parse(t: Tuple | str) -> Tuple:
    return parse_tuple(t) if isinstance(t, str) else t


def _intern(it: Interner, t: Tuple) -> tuple[int, int, int]:
    oid = it.intern_object(f"{t.resource.type}:{t.resource.id}")
    rid = it.intern_rel(f"{t.resource.type}#{t.relation}")
    soid = it.intern_object(f"{t.subject.type}:{t.subject.id}")
    srid = it.intern_rel(f"{t.subject.type}#{t.subject.relation}") if t.subject.relation else 0
    return oid, rid, soid << REL_BITS | srid


def _lookup(it: Interner, t: Tuple) -> tuple[int, int, int] | None:
    oid = it.oid(f"{t.resource.type}:{t.resource.id}")
    rid = it.rid(f"{t.resource.type}#{t.relation}")
    sk = it.subject_key(t.subject)
    if oid is None or rid is None or sk is None:
        return None
    return oid, rid, sk


def _freeze(d: dict[int, list[int]]) -> dict[int, array[int]]:
    return {k: array("q", sorted(v)) for k, v in d.items()}


def _merge(
    ov: dict[int, array[int]],
    read: Callable[[int], array[int]],
    changes: dict[int, tuple[set[int], set[int]]],
) -> None:
    for key, (adds, removes) in changes.items():
        cur = read(key)
        if removes:
            merged = sorted((set(cur) - removes) | adds)
        else:
            merged = sorted(set(cur).union(adds)) if len(cur) < 64 else _insert_sorted(cur, adds)
        ov[key] = array("q", merged)


def _insert_sorted(cur: array[int], adds: set[int]) -> list[int]:
    out = list(cur)
    for x in sorted(adds):
        i = bisect_left(out, x)
        if i == len(out) or out[i] != x:
            out.insert(i, x)
    return out


def _compact(base: Layer, ov: Layer) -> Layer:
    def fold(b: dict[int, array[int]], o: dict[int, array[int]]) -> dict[int, array[int]]:
        out = dict(b)
        for k, v in o.items():
            if v:
                out[k] = v
            else:
                out.pop(k, None)
        return out

    return Layer(fold(base.fwd, ov.fwd), fold(base.fus, ov.fus), fold(base.rev, ov.rev))
