"""Check, list-allowed, list-subjects and explain over a snapshot and a compiled schema. Pure."""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from gatehouse.graph.store import (
    F_REL,
    F_STEP,
    F_US,
    OID_MASK,
    R_REL,
    R_STEP,
    REL_BITS,
    REL_MASK,
    SK_MASK,
    Interner,
    Snapshot,
    contains,
)
from gatehouse.graph.tuples import ObjectRef, SubjectRef
from gatehouse.model.compiler import (
    ArrowPlan,
    CallPlan,
    CompiledSchema,
    ExclusionPlan,
    IntersectionPlan,
    Plan,
    RelPlan,
    UnionPlan,
)

try:  # the C build of the compiled check; without it the Python nodes run (same answers)
    from gatehouse.engine import _kernel
except ImportError:  # pragma: no cover - exercised by installs without a C compiler
    _kernel = None  # type: ignore[assignment]

DEFAULT_MAX_DEPTH = 50


class EngineError(Exception):
    """Base of every evaluation failure. A caller must treat it as a deny."""

    code = "ENGINE_ERROR"


class InvalidQuery(EngineError):
    """Unknown type, permission or relation in the request (the caller's mistake)."""

    code = "INVALID_QUERY"


class DepthExceeded(EngineError):
    """The graph is nested deeper than the configured limit along the path being evaluated."""

    code = "MAX_DEPTH_EXCEEDED"


class Decision(NamedTuple):
    """One answer. `reason` is a short tag: the rule or path that allowed, or why it denied.

    A named tuple rather than a frozen dataclass: built on every check, it costs a third as
    much."""

    allowed: bool
    revision: int
    reason: str


@dataclass(slots=True)
class ProofNode:
    """One step of an explanation: what was evaluated, whether it held, and its sub-steps."""

    label: str
    allowed: bool
    children: list[ProofNode] = field(default_factory=list)

    def render(self, indent: str = "") -> str:
        mark = "✓" if self.allowed else "✗"
        lines = [f"{indent}{mark} {self.label}"]
        for c in self.children:
            lines.append(c.render(indent + "  "))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "allowed": self.allowed,
            "children": [c.to_dict() for c in self.children],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    proof: ProofNode


class _Query:
    """Per-request evaluation state: the subject's keys, the current path and memo tables."""

    __slots__ = (
        "active",
        "changed",
        "closure",
        "cut",
        "cyclic",
        "depth",
        "done",
        "excluded",
        "memo",
        "partial",
        "path",
        "sets",
        "sk",
        "snap",
        "truncated",
        "userset",
        "wk",
    )

    def __init__(self, snap: Snapshot, sk: int, wk: int, userset: bool) -> None:
        self.snap = snap
        # Usersets the subject belongs to, computed bottom-up on first need (see _closure).
        self.closure: set[int] | None = None
        self.truncated = False
        self.sk = sk
        self.wk = wk
        self.userset = userset
        self.depth = 0
        self.path: set[tuple[int, int]] = set()
        self.memo: dict[tuple[int, int], str | None] = {}
        self.cut = False
        self.excluded = False
        # list-allowed fixpoint state
        self.done: dict[int, bytes] = {}
        self.partial: dict[int, bytes] = {}
        self.active: set[int] = set()
        self.cyclic = False
        self.changed = False
        self.sets = _PY_SETS  # list-allowed's set algebra


class Evaluator:
    """Answers queries against any snapshot using one compiled schema.

    Thread-safe. Per-request state lives in `_Query` / `_FastQuery`; between calls it keeps
    only derived, exact data: the plans compiled for an interner's relation ids, and the
    group closures of recent subjects for the one snapshot it last checked on (see
    `closure_cache`). Answers never depend on call history. Every failure raises an
    `EngineError`; callers turn it into a deny.
    """

    def __init__(
        self,
        schema: CompiledSchema,
        max_depth: int = DEFAULT_MAX_DEPTH,
        closure_cache: int = 16384,
        native: bool = True,
    ) -> None:
        """`closure_cache`: how many subjects' group closures the compiled check keeps for
        the snapshot it last ran on (0: none). A closure depends only on the snapshot, so
        reuse is exact; the table is dropped when a check sees another snapshot and cleared
        when full. `native`: run the compiled check in the C kernel when it is built (the
        Python nodes otherwise; both give the same answers and reasons)."""
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        if closure_cache < 0:
            raise ValueError("closure_cache must not be negative")
        self.schema = schema
        self.max_depth = max_depth
        self.closure_cache = closure_cache
        self.native = native and _kernel is not None
        self._calls: dict[int, Plan | None] = {}
        self._closure_keys = _closure_relations(schema)
        self._rid_plans: dict[int, tuple[Plan | None, bool]] = {}
        self._prog: _Program | None = None
        self._py_sets = _python_sets(max_depth)

    # validation ----------------------------------------------------------------
    def _resolve(self, type_name: str, permission: str) -> Plan:
        if not self.schema.has_type(type_name):
            raise InvalidQuery(f"unknown resource type {type_name!r}")
        plan = self.schema.plan(type_name, permission)
        if plan is None:
            raise InvalidQuery(f"type {type_name!r} has no permission or relation {permission!r}")
        return plan

    def _subject_query(self, snap: Snapshot, subject: SubjectRef) -> _Query:
        if not self.schema.has_type(subject.type):
            raise InvalidQuery(f"unknown subject type {subject.type!r}")
        if (
            subject.relation is not None
            and self.schema.plan(subject.type, subject.relation) is None
        ):
            raise InvalidQuery(f"type {subject.type!r} has no relation {subject.relation!r}")
        it = snap.interner
        sk = it.subject_key(subject)
        wk = -1
        if subject.relation is None:
            w = it.oid(f"{subject.type}:*")
            if w is not None:
                wk = w << REL_BITS
        return _Query(snap, -1 if sk is None else sk, wk, subject.relation is not None)

    def _plan_for(self, type_name: str, name: str) -> Plan | None:
        return self.schema.plan(type_name, name)

    # check -----------------------------------------------------------------------
    def check(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> Decision:
        prog = self._prog
        if prog is not None and prog.kernel is not None:
            # The whole compiled check in one C call; None when it does not cover the
            # query (then the path below decides, and refreshes what the kernel needs).
            d: Decision | None = prog.kernel.check(
                snap, subject, permission, resource, prog.closures
            )
            if d is not None:
                return d
        return self._check_compiled(snap, subject, permission, resource)

    def check_wire(
        self,
        payload: bytes,
        snap: Snapshot,
        subjects: dict[str, SubjectRef],
        resources: dict[str, ObjectRef],
        policy_revision: int,
        cells: list[Any] | None,
    ) -> bytes | None:
        """`check` from a serialized CheckRequest (gatehouse.v1) to a serialized
        CheckResponse, in one C call, for a server's hot path; None when the request is not
        one this path takes (see `_kernel.Program.check_wire`: subject and resource texts
        must be keys of `subjects` and `resources`, the caller's caches of references its
        parser accepted) or the compiled check does not cover it. The caller then decodes
        the request and calls `check`, which also refreshes what the kernel needs. `cells`
        (allowed, denied) counts the answer."""
        prog = self._prog
        if prog is None or prog.kernel is None:
            return None
        return prog.kernel.check_wire(
            payload, snap, prog.closures, subjects, resources, policy_revision, cells
        )

    def _check_compiled(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> Decision:
        """`check` when the kernel's one call did not answer: the program recompiled if the
        interner changed and the closure table made for `snap`, then the kernel again (or
        the Python nodes), and the general walk for what they do not cover."""
        it = snap.interner
        prog = self._program_for(it)
        fn = prog.fns.get((resource.type, permission))
        if fn is not None and subject.relation is None and subject.type in prog.types:
            # Fast path: a compiled plan (unions, relations, closed usersets, acyclic arrows)
            # for a plain subject. Falls back to the general walk when the data holds an edge
            # the compiled plan does not cover.
            held = prog.closures
            if held[0] is not snap:
                held = prog.closures = self._closures(prog, snap)
            kern = prog.kernel
            if kern is not None:
                d: Decision | None = kern.check(snap, subject, permission, resource, held)
                if d is not None:
                    return d
            else:
                look = it.oid
                oid = look(f"{resource.type}:{resource.id}")
                if oid is None:
                    return Decision(False, snap.revision, "no_path")
                so = look(f"{subject.type}:{subject.id}")
                w = it.wildcards.get(subject.type)
                q = _FastQuery(
                    snap,
                    -1 if so is None else so << REL_BITS,
                    -1 if w is None else w << REL_BITS,
                    held[2],
                    self.max_depth,
                )
                try:
                    reason = fn(q, oid)
                except _Fallback:
                    pass
                else:
                    if reason is None:
                        return Decision(False, snap.revision, "no_path")
                    return Decision(True, snap.revision, reason)
        return self._check_general(snap, subject, permission, resource)

    def _program_for(self, it: Interner) -> _Program:
        """The program compiled for the interner as it is now (recompiled when stale)."""
        prog = self._prog
        if prog is None or prog.stale(it):
            prog = self._program(it)
        return prog

    def check_many(
        self, snap: Snapshot, queries: Iterable[tuple[SubjectRef, str, ObjectRef]]
    ) -> list[Decision]:
        """`check` for each (subject, permission, resource), in order, on one snapshot: the
        same answers, with the per-call setup done once for the whole batch."""
        prog = self._program_for(snap.interner)
        if prog.kernel is None:
            return [self.check(snap, s, p, r) for s, p, r in queries]
        held = prog.closures
        if held[0] is not snap:
            held = prog.closures = self._closures(prog, snap)
        kcheck = prog.kernel.check
        out: list[Decision] = []
        add = out.append
        for subject, permission, resource in queries:
            d: Decision | None = kcheck(snap, subject, permission, resource, held)
            if d is None:
                add(self._check_compiled(snap, subject, permission, resource))
                now = self._prog  # recompiled if the interner gained a relation meanwhile
                if now is not None and now.kernel is not None:
                    kcheck, held = now.kernel.check, now.closures
            else:
                add(d)
        return out

    def _check_general(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> Decision:
        plan = self._resolve(resource.type, permission)
        q = self._subject_query(snap, subject)
        oid = snap.interner.oid(f"{resource.type}:{resource.id}")
        if oid is None:
            return Decision(False, snap.revision, "no_path")
        reason = self._check(q, oid, plan)
        if reason is None:
            return Decision(False, snap.revision, "excluded" if q.excluded else "no_path")
        return Decision(True, snap.revision, reason)

    def _hop(self, q: _Query, oid: int, plan: Plan) -> str | None:
        vk = (oid, id(plan))
        if vk in q.memo:
            return q.memo[vk]
        if vk in q.path:
            q.cut = True  # a cycle adds nothing new to a monotone union
            return None
        if q.depth >= self.max_depth:
            raise DepthExceeded(f"graph nested deeper than {self.max_depth} levels")
        outer_cut = q.cut
        q.cut = False
        q.path.add(vk)
        q.depth += 1
        try:
            r = self._check(q, oid, plan)
        finally:
            q.depth -= 1
            q.path.discard(vk)
        # A negative answer that was cut short by a cycle may differ on another path.
        if r is not None or not q.cut:
            q.memo[vk] = r
        q.cut = q.cut or outer_cut
        return r

    def _check(self, q: _Query, oid: int, plan: Plan) -> str | None:
        snap = q.snap
        it = snap.interner
        kind = type(plan)
        if kind is RelPlan:
            assert isinstance(plan, RelPlan)
            rid = it.rids.get(plan.key)
            if rid is None:
                return None
            fk = oid << REL_BITS | rid
            if q.userset:
                if contains(snap.fus(fk), q.sk):
                    return f"direct {plan.key}"
            else:
                arr = snap.fwd(fk)
                if arr:
                    if contains(arr, q.sk):
                        return f"direct {plan.key}"
                    if q.wk >= 0 and contains(arr, q.wk):
                        return f"wildcard {plan.key}"
            for uk in snap.fus(fk):
                uplan, closed = self._userset_info(snap, uk & REL_MASK)
                if uplan is None:
                    continue
                if closed:
                    # Membership of a plain relation chain: a set lookup instead of a walk.
                    if uk in self._closure(q):
                        return f"through {it.subject_str(uk)}"
                    if q.truncated:
                        raise DepthExceeded(f"graph nested deeper than {self.max_depth} levels")
                    continue
                r = self._hop(q, uk >> REL_BITS, uplan)
                if r is not None:
                    return f"through {it.subject_str(uk)} > {r}"
            return None
        if kind is UnionPlan:
            assert isinstance(plan, UnionPlan)
            for c in plan.children:
                r = self._check(q, oid, c)
                if r is not None:
                    return r
            return None
        if kind is ArrowPlan:
            assert isinstance(plan, ArrowPlan)
            rid = it.rids.get(plan.key)
            if rid is None:
                return None
            for tk in snap.fwd(oid << REL_BITS | rid):
                toid = tk >> REL_BITS
                tplan = self.schema.plan(it.type_of(toid), plan.computed)
                if tplan is None:
                    continue
                r = self._hop(q, toid, tplan)
                if r is not None:
                    return f"{plan.tupleset}->{it.names[toid]} > {r}"
            return None
        if kind is CallPlan:
            assert isinstance(plan, CallPlan)
            target = self._call(plan)
            return None if target is None else self._check(q, oid, target)
        if kind is IntersectionPlan:
            assert isinstance(plan, IntersectionPlan)
            parts = []
            for c in plan.children:
                r = self._check(q, oid, c)
                if r is None:
                    return None
                parts.append(r)
            return " & ".join(parts)
        if kind is ExclusionPlan:
            assert isinstance(plan, ExclusionPlan)
            r = self._check(q, oid, plan.base)
            if r is None:
                return None
            if self._check(q, oid, plan.subtract) is not None:
                q.excluded = True
                return None
            return r
        return None  # NilPlan

    def _call(self, plan: CallPlan) -> Plan | None:
        k = id(plan)
        if k not in self._calls:
            self._calls[k] = self.schema.plan(plan.type, plan.name)
        return self._calls[k]

    def _userset_info(self, snap: Snapshot, rid: int) -> tuple[Plan | None, bool]:
        """The plan a userset edge `x#rel` leads to, and whether `_closure` covers `rel`."""
        hit = self._rid_plans.get(rid)
        if hit is None:
            key = snap.interner.rel_names[rid]
            tname, _, rel = key.partition("#")
            hit = (self.schema.plan(tname, rel), key in self._closure_keys)
            self._rid_plans[rid] = hit
        return hit

    def _closure(self, q: _Query) -> set[int]:
        """Every userset key (`group:g#member`) the subject belongs to, found bottom-up.

        Only relations in `_closure_keys` are followed: relations whose members come from
        tuples and from usersets of such relations alone, so membership is plain
        reachability in the reverse index. Breadth-first, so cycles end; a chain longer
        than max_depth leaves `q.truncated` set, and a miss then is a depth error.
        """
        if q.closure is not None:
            return q.closure
        q.closure, q.truncated = _closure_of(
            q.snap, q.sk, q.wk, self._closure_rids(q.snap), self.max_depth
        )
        return q.closure

    def _closure_rids(self, snap: Snapshot) -> list[int]:
        rids = snap.interner.rids
        return [r for r in (rids.get(k) for k in self._closure_keys) if r is not None]

    def _userset_plan(self, snap: Snapshot, rid: int) -> Plan | None:
        tname, _, rel = snap.interner.rel_names[rid].partition("#")
        return self.schema.plan(tname, rel)

    # compiled fast path ------------------------------------------------------------
    def _closures(self, prog: _Program, snap: Snapshot) -> _Closures:
        """The subject-closure table for `snap` and the lookup the C kernel calls."""
        cache: dict[tuple[int, int], tuple[set[int], bool]] | None = (
            {} if self.closure_cache else None
        )
        rids, depth, limit = prog.closure_rids, self.max_depth, self.closure_cache
        kern = prog.kernel

        def compute(sk: int, wk: int) -> tuple[set[int], bool]:
            if kern is not None:
                return kern.closure(snap, sk, wk)
            return _closure_packed(snap, sk, wk, rids, depth)

        def members(sk: int, wk: int) -> tuple[set[int], bool]:
            if cache is None:
                return compute(sk, wk)
            hit = cache.get((sk, wk))
            if hit is None:
                hit = compute(sk, wk)
                if len(cache) >= limit:
                    cache.clear()
                cache[(sk, wk)] = hit
            return hit

        return snap, cache, members

    def _program(self, it: Interner) -> _Program:
        """Compile every plan the fast path covers against the interner's current ids.

        Relation ids are resolved once here, so a compiled check does no string work and no
        dispatch on plan node types. Recompiled when the interner gains a relation key.
        """
        nrel = len(it.rel_names)
        prog = _Program(it, nrel, frozenset(self.schema.types))
        closure_keys = self._closure_keys
        for r in range(1, nrel):
            key = it.rel_names[r]
            tname, _, rel = key.partition("#")
            if key in closure_keys:
                prog.closed_rids.add(r)
                prog.closure_rids.append(r)
            elif self.schema.plan(tname, rel) is not None:
                prog.other_rids.add(r)
        # Compile targets first: a plan whose compilation fails falls back to the walk.
        for tname in sorted(self.schema.types):
            for name in self.schema.members(tname):
                node = self._compile_member(prog, tname, (name,), set())
                prog.fns[(tname, name)] = None if node is None else prog.entry(node)
        if self.native:
            prog.lower(
                DepthExceeded(f"graph nested deeper than {self.max_depth} levels"), self.max_depth
            )
        self._prog = prog
        return prog

    def _compile_member(
        self, prog: _Program, tname: str, names: tuple[str, ...], active: set[tuple[str, str]]
    ) -> _Node | None:
        """The node for members `names` of `tname` evaluated in order, as one union.

        One name is an ordinary member; several are the targets of adjacent arrows over the
        same relation, merged so their shared parts are read once.
        """
        key = (tname, names)
        if key in prog.compiled:
            return prog.compiled[key]
        keys = [(tname, n) for n in names]
        if any(k in active for k in keys):
            return None  # recursion through arrows: data may cycle, use the general walk
        items: list[Plan] = []
        for n in names:
            plan = self.schema.plan(tname, n)
            got = None if plan is None else self._flatten(plan)
            if got is None:
                prog.compiled[key] = None
                return None
            items += got
        active.update(keys)
        try:
            node = self._build(prog, items, active)
        finally:
            active.difference_update(keys)
        if node is not None and prog.depth_of(node) >= self.max_depth:
            node = None  # the general walk reports DepthExceeded for this shape
        prog.compiled[key] = node
        return node

    def _flatten(self, plan: Plan) -> list[Plan] | None:
        """The relations and arrows a union of same-object rules reads, in walk order."""
        kind = type(plan)
        if kind is RelPlan or kind is ArrowPlan:
            return [plan]
        if kind is UnionPlan:
            assert isinstance(plan, UnionPlan)
            out: list[Plan] = []
            for c in plan.children:
                got = self._flatten(c)
                if got is None:
                    return None
                out += got
            return out
        if kind is CallPlan:
            assert isinstance(plan, CallPlan)
            target = self._call(plan)
            return [] if target is None else self._flatten(target)
        return None  # intersections, exclusions and nil plans take the general walk

    def _build(
        self, prog: _Program, items: list[Plan], active: set[tuple[str, str]]
    ) -> _Node | None:
        # A relation or arrow already read on this object answered None (or the walk would
        # have stopped), and reads are deterministic: later copies are dropped.
        flat: list[Plan] = []
        seen: set[tuple[str, str]] = set()
        for p in items:
            if isinstance(p, RelPlan):
                k = (p.key, "")
            else:
                assert isinstance(p, ArrowPlan)
                k = (p.key, p.computed)
            if k not in seen:
                seen.add(k)
                flat.append(p)
        nodes: list[_Node] = []
        j = 0
        while j < len(flat):
            p = flat[j]
            j += 1
            if isinstance(p, RelPlan):
                nodes.append(_rel_node(prog, prog.it.rids.get(p.key), p.key))
                continue
            assert isinstance(p, ArrowPlan)
            group = [p]
            while j < len(flat):
                nxt = flat[j]
                if not isinstance(nxt, ArrowPlan) or nxt.key != p.key:
                    break
                group.append(nxt)
                j += 1
            node = self._arrows(prog, group, active)
            if node is None:
                return None
            nodes.append(node)
        if not nodes:
            return _nil_node(prog)
        return _union_node(prog, nodes)

    def _arrows(
        self, prog: _Program, group: list[ArrowPlan], active: set[tuple[str, str]]
    ) -> _Node | None:
        """Adjacent arrows over one relation: each alone, and merged for a single target."""
        it = prog.it
        rid = it.rids.get(group[0].key)
        if rid is None:
            return _nil_node(prog)
        type_names = list(it.type_names)
        singles: list[_Node] = []
        depth = 0
        for p in group:
            targets: dict[int, _Entry] = {}
            skip: set[int] = set()
            for tid, tname in enumerate(type_names):
                if self.schema.plan(tname, p.computed) is None:
                    skip.add(tid)  # no such member there: the walk skips the edge
                    continue
                node = self._compile_member(prog, tname, (p.computed,), active)
                if node is None:
                    return None
                targets[tid] = prog.entry(node)
                depth = max(depth, prog.depth_of(node))
            singles.append(_arrow_node(prog, rid, p.tupleset, targets, frozenset(skip), depth + 1))
        if len(singles) == 1:
            return singles[0]
        merged: dict[int, _Entry] = {}
        mskip: set[int] = set()
        for tid, tname in enumerate(type_names):
            names = tuple(p.computed for p in group if self.schema.plan(tname, p.computed))
            if not names:
                mskip.add(tid)
                continue
            node = self._compile_member(prog, tname, names, active)
            if node is None:
                return None
            merged[tid] = prog.entry(node)
            depth = max(depth, prog.depth_of(node))
        return _multi_arrow_node(
            prog, rid, group[0].tupleset, merged, frozenset(mskip), singles, depth + 1
        )

    # list-allowed ----------------------------------------------------------------
    def list_allowed(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource_type: str
    ) -> list[str]:
        """Every id of `resource_type` on which `subject` holds `permission`, sorted. Complete."""
        return self._list_allowed(snap, subject, permission, resource_type, len(resource_type) + 1)

    def list_allowed_names(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource_type: str
    ) -> list[str]:
        """`list_allowed` as object names (`type:id`), sorted the same way (every name has
        the same prefix): for a server, which sends names, so the ids need not be cut out
        and prefixed again."""
        return self._list_allowed(snap, subject, permission, resource_type, 0)

    def _list_allowed(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource_type: str, cut: int
    ) -> list[str]:
        plan = self._resolve(resource_type, permission)
        q = self._subject_query(snap, subject)
        if q.sk < 0 and q.wk < 0:
            return []
        it = snap.interner
        prog = self._program_for(it)
        q.sets = prog.sets or self._py_sets
        while True:
            q.done = {}
            q.changed = False
            q.cyclic = False
            oids = self._lookup_memo(q, resource_type, plan)
            if not (q.cyclic and q.changed):
                break
        return q.sets.names(it.names, oids, cut) if oids else []

    def _lookup_memo(self, q: _Query, tname: str, plan: Plan) -> bytes:
        k = id(plan)
        hit = q.done.get(k)
        if hit is not None:
            return hit
        if k in q.active:
            q.cyclic = True
            return q.partial.get(k, b"")
        if len(q.active) >= self.max_depth:
            raise DepthExceeded(f"graph nested deeper than {self.max_depth} levels")
        q.active.add(k)
        try:
            res = self._lookup(q, tname, plan)
        finally:
            q.active.discard(k)
        if res != q.partial.get(k):
            q.partial[k] = res
            q.changed = True
        q.done[k] = res
        return res

    def _lookup(self, q: _Query, tname: str, plan: Plan) -> bytes:
        """The oids of `tname` on which q's subject holds `plan`, as an oid set (`_Sets`)."""
        snap = q.snap
        sets = q.sets
        it = snap.interner
        if isinstance(plan, RelPlan):
            rid = it.rids.get(plan.key)
            if rid is None:
                return b""
            parts = [
                sets.revs(snap, _ONE(k >> REL_BITS), k & REL_MASK, rid)
                for k in (q.sk, q.wk)
                if k >= 0
            ]
            recursive = False
            for utype, urel in plan.usersets:
                if utype == plan.type and urel == plan.name:
                    recursive = True  # nested groups: closed below in one pass
                    continue
                urid = it.rids.get(f"{utype}#{urel}")
                uplan = self.schema.plan(utype, urel)
                if urid is None or uplan is None:
                    continue
                groups = self._lookup_memo(q, utype, uplan)
                if groups:
                    parts.append(sets.revs(snap, groups, urid, rid))
            res = sets.union(parts)
            return sets.nested(snap, res, rid) if recursive and res else res
        if isinstance(plan, UnionPlan):
            return sets.union([self._lookup(q, tname, c) for c in plan.children])
        if isinstance(plan, ArrowPlan):
            rid = it.rids.get(plan.key)
            if rid is None:
                return b""
            parts = []
            for utype in plan.target_types:
                tplan = self.schema.plan(utype, plan.computed)
                if tplan is None:
                    continue
                targets = self._lookup_memo(q, utype, tplan)
                if targets:
                    parts.append(sets.revs(snap, targets, 0, rid))
            return sets.union(parts)
        if isinstance(plan, CallPlan):
            target = self._call(plan)
            return b"" if target is None else self._lookup_memo(q, tname, target)
        if isinstance(plan, IntersectionPlan):
            got = [self._lookup(q, tname, c) for c in plan.children]
            got.sort(key=len)
            out = got[0]
            for other in got[1:]:
                out = sets.intersect(out, other)
            return out
        if isinstance(plan, ExclusionPlan):
            base = self._lookup(q, tname, plan.base)
            keep = array("q")
            for o in _oids(base):
                cq = _Query(snap, q.sk, q.wk, q.userset)
                if self._check(cq, o, plan.subtract) is None:
                    keep.append(o)
            return keep.tobytes()  # still sorted: base was
        return b""  # NilPlan

    # list-subjects -----------------------------------------------------------------
    def list_subjects(
        self, snap: Snapshot, resource: ObjectRef, permission: str, subject_type: str
    ) -> list[str]:
        """Every subject of `subject_type` holding `permission` on `resource`, sorted.

        `type:*` is listed when the permission is granted to every subject of the type
        (a public grant); the concrete subjects are listed as well.
        """
        plan = self._resolve(resource.type, permission)
        if not self.schema.has_type(subject_type):
            raise InvalidQuery(f"unknown subject type {subject_type!r}")
        it = snap.interner
        oid = it.oid(f"{resource.type}:{resource.id}")
        if oid is None:
            return []
        tid = it.type_ids.get(subject_type)
        if tid is None:
            return []
        candidates: set[int] = set()
        self._expand(snap, oid, plan, tid, candidates, set(), 0)
        out: list[str] = []
        for sk in candidates:
            wildcard = it.names[sk >> REL_BITS].endswith(":*")
            q = _Query(snap, sk, sk if wildcard else -1, False)
            if not wildcard:
                w = it.oid(f"{subject_type}:*")
                q.wk = -1 if w is None else w << REL_BITS
            if self._check(q, oid, plan) is not None:
                out.append(it.names[sk >> REL_BITS])
        out.sort()
        return out

    def _expand(
        self,
        snap: Snapshot,
        oid: int,
        plan: Plan,
        tid: int,
        out: set[int],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        """Collect a superset of the plain subjects of type `tid` that may hold `plan`."""
        it = snap.interner
        if isinstance(plan, RelPlan):
            rid = it.rids.get(plan.key)
            if rid is None:
                return
            fk = oid << REL_BITS | rid
            for sk in snap.fwd(fk):
                if it.obj_type[sk >> REL_BITS] == tid:
                    out.add(sk)
            for uk in snap.fus(fk):
                uplan = self._userset_plan(snap, uk & REL_MASK)
                if uplan is not None:
                    self._expand_hop(snap, uk >> REL_BITS, uplan, tid, out, seen, depth)
        elif isinstance(plan, UnionPlan):
            for c in plan.children:
                self._expand(snap, oid, c, tid, out, seen, depth)
        elif isinstance(plan, IntersectionPlan):
            # Every child, not just the first: a subject granted by the first child only
            # through a wildcard (`user:*`) must still be found where another child names it.
            for c in plan.children:
                self._expand(snap, oid, c, tid, out, seen, depth)
        elif isinstance(plan, ExclusionPlan):
            self._expand(snap, oid, plan.base, tid, out, seen, depth)
        elif isinstance(plan, ArrowPlan):
            rid = it.rids.get(plan.key)
            if rid is None:
                return
            for tk in snap.fwd(oid << REL_BITS | rid):
                toid = tk >> REL_BITS
                tplan = self.schema.plan(it.type_of(toid), plan.computed)
                if tplan is not None:
                    self._expand_hop(snap, toid, tplan, tid, out, seen, depth)
        elif isinstance(plan, CallPlan):
            target = self._call(plan)
            if target is not None:
                self._expand(snap, oid, target, tid, out, seen, depth)

    def _expand_hop(
        self,
        snap: Snapshot,
        oid: int,
        plan: Plan,
        tid: int,
        out: set[int],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        vk = (oid, id(plan))
        if vk in seen:
            return
        if depth >= self.max_depth:
            raise DepthExceeded(f"graph nested deeper than {self.max_depth} levels")
        seen.add(vk)
        self._expand(snap, oid, plan, tid, out, seen, depth + 1)

    # explain -------------------------------------------------------------------------
    def explain(
        self, snap: Snapshot, subject: SubjectRef, permission: str, resource: ObjectRef
    ) -> Explanation:
        """The decision with its proof: every rule tried, and which tuples made it hold."""
        decision = self.check(snap, subject, permission, resource)
        q = self._subject_query(snap, subject)
        oid = snap.interner.oid(f"{resource.type}:{resource.id}")
        label = f"{resource}#{permission}"
        plan = self._resolve(resource.type, permission)
        if oid is None:
            root = ProofNode(f"{label}: {resource} has no relationships", False)
        else:
            root = self._explain(q, oid, plan, label)
        return Explanation(decision, root)

    def _explain_hop(self, q: _Query, oid: int, plan: Plan, label: str) -> ProofNode:
        vk = (oid, id(plan))
        if vk in q.path:
            return ProofNode(f"{label} (cycle: already being evaluated)", False)
        if q.depth >= self.max_depth:
            raise DepthExceeded(f"graph nested deeper than {self.max_depth} levels")
        q.path.add(vk)
        q.depth += 1
        try:
            return self._explain(q, oid, plan, label)
        finally:
            q.depth -= 1
            q.path.discard(vk)

    def _explain(self, q: _Query, oid: int, plan: Plan, label: str) -> ProofNode:
        snap = q.snap
        it = snap.interner
        obj = it.names[oid]
        if isinstance(plan, RelPlan):
            node = ProofNode(f"{obj}#{plan.name}", False)
            rid = it.rids.get(plan.key)
            if rid is None:
                node.label += " (no tuples)"
                return node
            fk = oid << REL_BITS | rid
            arr = snap.fus(fk) if q.userset else snap.fwd(fk)
            if contains(arr, q.sk):
                node.children.append(
                    ProofNode(f"tuple {obj}#{plan.name}@{it.subject_str(q.sk)}", True)
                )
            if not q.userset and q.wk >= 0 and contains(snap.fwd(fk), q.wk):
                node.children.append(
                    ProofNode(f"tuple {obj}#{plan.name}@{it.subject_str(q.wk)} (wildcard)", True)
                )
            for uk in snap.fus(fk):
                uplan = self._userset_plan(snap, uk & REL_MASK)
                if uplan is None:
                    continue
                child = self._explain_hop(q, uk >> REL_BITS, uplan, it.subject_str(uk))
                child.label = f"through {obj}#{plan.name}@{it.subject_str(uk)}: {child.label}"
                node.children.append(child)
            if not node.children:
                node.label += " (subject not found)"
            node.allowed = any(c.allowed for c in node.children)
            return node
        if isinstance(plan, UnionPlan):
            kids = [self._explain(q, oid, c, label) for c in plan.children]
            return ProofNode(f"{label}: any of", any(k.allowed for k in kids), kids)
        if isinstance(plan, IntersectionPlan):
            kids = [self._explain(q, oid, c, label) for c in plan.children]
            return ProofNode(f"{label}: all of", all(k.allowed for k in kids), kids)
        if isinstance(plan, ExclusionPlan):
            base = self._explain(q, oid, plan.base, label)
            sub = self._explain(q, oid, plan.subtract, label)
            sub.label = f"excluded if: {sub.label}"
            return ProofNode(f"{label}: but not", base.allowed and not sub.allowed, [base, sub])
        if isinstance(plan, ArrowPlan):
            node = ProofNode(f"{obj}#{plan.tupleset}->{plan.computed}", False)
            rid = it.rids.get(plan.key)
            for tk in snap.fwd(oid << REL_BITS | rid) if rid is not None else ():
                toid = tk >> REL_BITS
                tplan = self.schema.plan(it.type_of(toid), plan.computed)
                if tplan is None:
                    continue
                tlabel = f"{it.names[toid]}#{plan.computed}"
                child = self._explain_hop(q, toid, tplan, tlabel)
                if not child.label.startswith(tlabel):
                    child = ProofNode(tlabel, child.allowed, [child])
                node.children.append(child)
            if not node.children:
                node.label += f" (no {plan.tupleset})"
            node.allowed = any(c.allowed for c in node.children)
            return node
        if isinstance(plan, CallPlan):
            target = self._call(plan)
            inner_label = f"{obj}#{plan.name}"
            if target is None:
                return ProofNode(f"{inner_label} (undefined)", False)
            inner = self._explain(q, oid, target, inner_label)
            if not inner.label.startswith(inner_label):
                inner = ProofNode(inner_label, inner.allowed, [inner])
            return inner
        return ProofNode("nil", False)


def _closure_relations(schema: CompiledSchema) -> frozenset[str]:
    """Keys `type#rel` of relations used as usersets whose membership is pure reachability.

    A relation qualifies when every userset it allows leads to another qualifying relation
    (never to a permission, whose rules a reverse walk cannot evaluate).
    """
    defs = schema.schema.definitions
    targets: set[tuple[str, str]] = set()
    for d in defs.values():
        for rel in d.relations.values():
            for t in rel.allowed:
                if t.relation is not None and t.relation in defs[t.type].relations:
                    targets.add((t.type, t.relation))
    ok = set(targets)
    changed = True
    while changed:
        changed = False
        for tname, rname in list(ok):
            for t in defs[tname].relations[rname].allowed:
                if t.relation is not None and (t.type, t.relation) not in ok:
                    ok.discard((tname, rname))
                    changed = True
                    break
    return frozenset(f"{t}#{r}" for t, r in ok)


# Compiled fast path ------------------------------------------------------------------


class _Sets(NamedTuple):
    """list-allowed's set algebra. An oid set is bytes of sorted, distinct native int64:
    the C kernel builds and merges them without an int object per oid, and two equal sets
    compare equal (the fixpoint loop compares results)."""

    revs: Callable[[Snapshot, bytes, int, int], bytes]  # (snap, oids, srel, rid)
    nested: Callable[[Snapshot, bytes, int], bytes]  # (snap, seeds, rid)
    union: Callable[[list[bytes]], bytes]
    intersect: Callable[[bytes, bytes], bytes]
    names: Callable[[list[str], bytes, int], list[str]]  # (names, oids, cut): sorted, cut


_ONE = struct.Struct("=q").pack  # a one-oid set


def _oids(s: bytes) -> array[int]:
    a = array("q")
    a.frombytes(s)
    return a


def _packed(oids: Iterable[int]) -> bytes:
    return array("q", sorted(oids)).tobytes()


def _py_revs(snap: Snapshot, oids: bytes, srel: int, rid: int) -> bytes:
    out: set[int] = set()
    for o in _oids(oids):
        out.update(snap.rev((o << REL_BITS | srel) << REL_BITS | rid))
    return _packed(out)


def _py_nested(snap: Snapshot, seeds: bytes, rid: int, max_depth: int) -> bytes:
    res = set(_oids(seeds))
    frontier = set(res)
    level = 0
    while frontier:
        level += 1
        if level > max_depth:
            raise DepthExceeded(f"graph nested deeper than {max_depth} levels")
        nxt: set[int] = set()
        for g in frontier:
            nxt.update(snap.rev((g << REL_BITS | rid) << REL_BITS | rid))
        nxt -= res
        res |= nxt
        frontier = nxt
    return _packed(res)


def _py_union(parts: list[bytes]) -> bytes:
    out: set[int] = set()
    for p in parts:
        out.update(_oids(p))
    return _packed(out)


def _py_intersect(a: bytes, b: bytes) -> bytes:
    return _packed(set(_oids(a)).intersection(_oids(b)))


def _py_names(names: list[str], oids: bytes, cut: int) -> list[str]:
    return [n[cut:] for n in sorted(names[o] for o in _oids(oids))]


def _python_sets(max_depth: int) -> _Sets:
    """The pure-Python `_Sets` (the reference for the kernel's, and the fallback)."""
    return _Sets(
        _py_revs, partial(_py_nested, max_depth=max_depth), _py_union, _py_intersect, _py_names
    )


_PY_SETS = _python_sets(DEFAULT_MAX_DEPTH)


class _Fallback(Exception):
    """The data holds an edge the compiled plan does not cover: use the general walk."""


# A compiled node reads one object's group of forward entries, arr[lo:hi] (lo < hi); an
# entry point takes the oid and finds its group once for all the nodes below it.
_Node = Callable[["_FastQuery", "array[int]", int, int], str | None]
_Entry = Callable[["_FastQuery", int], str | None]
# What the C kernel runs for a node: (kind, base, ubase, end, reason parts, child nodes,
# (type id -> target entry, type ids to skip, type count at compile time)).
_Spec = tuple[
    int, int, int, int, str, str, Sequence[_Node], tuple[dict[int, _Entry], frozenset[int], int]
]
_Closures = tuple[
    "Snapshot | None",
    "dict[tuple[int, int], tuple[set[int], bool]] | None",
    Callable[[int, int], tuple[set[int], bool]],
]
_K_NIL, _K_REL, _K_UNION, _K_ARROW, _K_MULTI = range(5)  # node kinds, as in _kernel.c


def _no_members(sk: int, wk: int) -> tuple[set[int], bool]:
    raise AssertionError("no snapshot bound")


class _FastQuery:
    """Per-check state of the compiled path: the snapshot's packed indexes, subject keys,
    and the subject's userset closure (computed on first need)."""

    __slots__ = (
        "closure",
        "f_dat",
        "f_off",
        "f_ov",
        "f_ovl",
        "lookup",
        "max_depth",
        "memo",
        "nf",
        "sk",
        "truncated",
        "ver",
        "wk",
    )

    def __init__(
        self,
        snap: Snapshot,
        sk: int,
        wk: int,
        lookup: Callable[[int, int], tuple[set[int], bool]],
        max_depth: int,
    ) -> None:
        """`lookup(sk, wk)`: the subject's closure and whether it was cut at the depth limit
        (the evaluator's per-snapshot table, `Evaluator._closures`)."""
        self.lookup = lookup
        self.f_ov = snap.f_ov
        self.f_ovl = snap.f_ovl
        self.ver = snap.ver
        self.f_off = snap.f_off
        self.f_dat = snap.f_dat
        self.nf = snap.nf
        self.sk = sk
        self.wk = wk
        self.max_depth = max_depth
        self.closure: set[int] | None = None
        self.truncated = False
        self.memo: dict[int, str | None] = {}

    def members(self) -> set[int]:
        """The subject's closure (never mutated: it may be shared through the cache)."""
        c = self.closure
        if c is None:
            c, self.truncated = self.lookup(self.sk, self.wk)
            self.closure = c
        return c


class _Program:
    """Compiled nodes for one interner at one size of its relation table."""

    def __init__(self, it: Interner, nrel: int, types: frozenset[str]) -> None:
        self.it = it
        self.names = it.names
        self.nrel = nrel
        self.types = types
        self.fns: dict[tuple[str, str], _Entry | None] = {}
        self.entries: dict[int, _Entry] = {}
        self.slots: dict[int, int] = {}
        self.compiled: dict[tuple[str, tuple[str, ...]], _Node | None] = {}
        self.closed_rids: set[int] = set()
        self.other_rids: set[int] = set()
        self.closure_rids: list[int] = []
        self.depths: dict[int, int] = {}  # id(node) -> arrow hops below it
        # subject closures for one snapshot: (snapshot, (sk, wk) -> (closure, truncated), and
        # the lookup through that table)
        self.closures: _Closures = (None, None, _no_members)
        self.specs: dict[int, _Spec] = {}  # id(node) -> what the C kernel needs to run it
        self.entry_nodes: dict[int, _Node] = {}  # id(entry) -> its node
        self.kernel: _kernel.Program | None = None  # once lowered
        self.knodes: dict[_Entry, int] = {}  # entry -> index of its node in the kernel
        self.sets: _Sets | None = None  # the kernel's, once lowered

    def stale(self, it: Interner) -> bool:
        """Compiled for another interner, or before it gained a relation key or new tables."""
        return self.it is not it or self.nrel != len(it.rel_names) or self.names is not it.names

    def depth_of(self, node: _Node) -> int:
        return self.depths.get(id(node), 0)

    def keep(self, node: _Node, depth: int, spec: _Spec) -> _Node:
        self.depths[id(node)] = depth
        self.specs[id(node)] = spec
        return node

    def lower(self, depth_error: DepthExceeded, max_depth: int) -> None:
        """Give the C kernel every node reachable from a compiled entry point, as specs
        whose node references are list indexes."""
        order: dict[int, int] = {}
        nodes: list[_Node] = []

        def visit(node: _Node) -> int:
            k = id(node)
            if k not in order:
                order[k] = len(nodes)
                nodes.append(node)
                spec = self.specs[k]
                for kid in spec[6]:
                    visit(kid)
                for f in spec[7][0].values():
                    visit(self.entry_nodes[id(f)])
            return order[k]

        entries = {f: visit(self.entry_nodes[id(f)]) for f in self.fns.values() if f is not None}
        out = []
        for node in nodes:
            kind, base, ubase, end, s1, s2, kids, (targets, skip, ntypes) = self.specs[id(node)]
            tlist = [
                order[id(self.entry_nodes[id(targets[t])])]
                if t in targets
                else -1
                if t in skip
                else -2
                for t in range(ntypes)
            ]
            out.append((kind, base, ubase, end, s1, s2, [order[id(k)] for k in kids], tlist))
        relkind = bytes(
            1 if r in self.closed_rids else 2 if r in self.other_rids else 0
            for r in range(self.nrel)
        )
        self.kernel = _kernel.Program(
            out,
            relkind,
            self.names,
            self.it.obj_type,
            self.it.subject_str,
            [key.partition("#")[2] for key in self.it.rel_names[: self.nrel]],
            _Fallback,
            DepthExceeded,
            str(depth_error),
            self.closure_rids,
            max_depth,
        )
        self.knodes = entries
        by_type: dict[str, dict[str, int]] = {}
        for (tname, name), f in self.fns.items():
            if f is not None:
                by_type.setdefault(tname, {})[name] = entries[f]
        self.kernel.bind(self.it, self.nrel, by_type, self.types, Decision)
        k = self.kernel
        self.sets = _Sets(k.revs, k.nested, _kernel.union, _kernel.intersect, _kernel.names)

    def slot(self, f: _Entry) -> int:
        """A small number naming entry point `f` in per-check memo keys."""
        return self.slots.setdefault(id(f), len(self.slots))

    def entry(self, node: _Node) -> _Entry:
        """The oid-level entry point of `node`: finds the object's group, then runs it."""
        hit = self.entries.get(id(node))
        if hit is not None:
            return hit

        def enter(q: _FastQuery, oid: int) -> str | None:
            v = q.f_ov.get(oid)
            if v is not None:  # overlay: the newest region not newer than the snapshot
                ovl = q.f_ovl
                ver = q.ver
                while v >= 0:
                    c = ovl[v >> 32]
                    s = v & OID_MASK
                    if c[s] <= ver:
                        lo = s + 3
                        hi = lo + c[s + 2]
                        return None if lo == hi else node(q, c, lo, hi)
                    v = c[s + 1]
            if oid >= q.nf:
                return None
            off = q.f_off
            lo = off[oid]
            hi = off[oid + 1]
            if lo == hi:
                return None
            return node(q, q.f_dat, lo, hi)

        self.entries[id(node)] = enter
        self.entry_nodes[id(enter)] = node
        return enter


def _nil_node(prog: _Program) -> _Node:
    def nil(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
        return None

    return prog.keep(nil, 0, (_K_NIL, 0, 0, 0, "", "", (), ({}, frozenset(), 0)))


def _rel_node(prog: _Program, rid: int | None, key: str) -> _Node:
    if rid is None:
        return _nil_node(prog)
    it = prog.it
    direct = f"direct {key}"
    wildcard = f"wildcard {key}"
    closed = prog.closed_rids
    other = prog.other_rids
    base = rid << F_REL
    ubase = base | F_US
    end = base + F_STEP

    def rel(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
        # Find the relation's run, then walk it: plain subjects first, usersets after. A
        # long run of plain subjects is searched by bisection instead.
        i = bisect_left(arr, base, lo, hi)
        if i == hi:
            return None
        v = arr[i]
        if v >= end:
            return None
        sk = q.sk
        x = base | sk if sk >= 0 else -1
        wk = q.wk
        xw = base | wk if wk >= 0 else -1
        if v < ubase:
            if i + 8 < hi and arr[i + 8] < ubase:
                # long run: bisect for the subject, the wildcard and the first userset
                if x >= 0:
                    j = bisect_left(arr, x, i, hi)
                    if j < hi and arr[j] == x:
                        return direct
                if xw >= 0:
                    j = bisect_left(arr, xw, i, hi)
                    if j < hi and arr[j] == xw:
                        return wildcard
                i = bisect_left(arr, ubase, i, hi)
            else:
                wild = False
                while True:
                    if v == x:
                        return direct
                    if v == xw:
                        wild = True
                    i += 1
                    if i == hi:
                        return wildcard if wild else None
                    v = arr[i]
                    if v >= ubase:
                        break
                if wild:
                    return wildcard
            if i == hi or arr[i] >= end:
                return None
        members = q.members()
        while i < hi:
            v = arr[i]
            if v >= end:
                break
            uk = v & SK_MASK
            if uk in members:
                return f"through {it.subject_str(uk)}"
            r = uk & REL_MASK
            if r in closed:
                if q.truncated:
                    raise DepthExceeded(f"graph nested deeper than {q.max_depth} levels")
            elif r in other:
                raise _Fallback
            i += 1
        return None

    return prog.keep(rel, 0, (_K_REL, base, ubase, end, direct, wildcard, (), ({}, frozenset(), 0)))


def _union_node(prog: _Program, kids: list[_Node]) -> _Node:
    depth = max((prog.depth_of(k) for k in kids), default=0)
    if len(kids) == 1:
        return kids[0]
    if len(kids) == 2:
        a, b = kids

        def union2(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
            r = a(q, arr, lo, hi)
            return r if r is not None else b(q, arr, lo, hi)

        return prog.keep(union2, depth, (_K_UNION, 0, 0, 0, "", "", (a, b), ({}, frozenset(), 0)))
    if len(kids) == 3:
        a, b, c = kids

        def union3(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
            r = a(q, arr, lo, hi)
            if r is not None:
                return r
            r = b(q, arr, lo, hi)
            return r if r is not None else c(q, arr, lo, hi)

        return prog.keep(
            union3, depth, (_K_UNION, 0, 0, 0, "", "", (a, b, c), ({}, frozenset(), 0))
        )
    kt = tuple(kids)

    def union(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
        for k in kt:
            r = k(q, arr, lo, hi)
            if r is not None:
                return r
        return None

    return prog.keep(union, depth, (_K_UNION, 0, 0, 0, "", "", kt, ({}, frozenset(), 0)))


def _arrow_node(
    prog: _Program,
    rid: int,
    tupleset: str,
    targets: dict[int, _Entry],
    skip: frozenset[int],
    depth: int,
) -> _Node:
    it = prog.it
    obj_type = it.obj_type
    names = it.names
    slots = {tid: prog.slot(f) for tid, f in targets.items()}

    base = rid << F_REL
    ubase = base | F_US

    def arrow(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
        a = bisect_left(arr, base, lo, hi)
        if a == hi or arr[a] >= ubase:
            return None
        b = bisect_left(arr, ubase, a, hi)
        for i in range(a, b):
            toid = (arr[i] & SK_MASK) >> REL_BITS
            tid = obj_type[toid]
            f = targets.get(tid)
            if f is None:
                if tid in skip:
                    continue
                raise _Fallback  # a type interned after compilation
            memo = q.memo
            mk = toid << 16 | slots[tid]
            if mk in memo:
                r = memo[mk]
            else:
                r = memo[mk] = f(q, toid)
            if r is not None:
                return f"{tupleset}->{names[toid]} > {r}"
        return None

    spec = (_K_ARROW, base, ubase, 0, tupleset, "", (), (targets, skip, len(it.type_names)))
    return prog.keep(arrow, depth, spec)


def _multi_arrow_node(
    prog: _Program,
    rid: int,
    tupleset: str,
    targets: dict[int, _Entry],
    skip: frozenset[int],
    singles: list[_Node],
    depth: int,
) -> _Node:
    """Arrows `rel->a`, `rel->b`, ... in a row. With one target object the walk's order is
    a(t), b(t), ...: one merged node there. With several it is a(t1), a(t2), b(t1), ...:
    each arrow in turn."""
    it = prog.it
    obj_type = it.obj_type
    names = it.names
    slots = {tid: prog.slot(f) for tid, f in targets.items()}
    base = rid << F_REL
    ubase = base | F_US

    def multi(q: _FastQuery, arr: array[int], lo: int, hi: int) -> str | None:
        a = bisect_left(arr, base, lo, hi)
        if a == hi or arr[a] >= ubase:
            return None
        if a + 1 < hi and arr[a + 1] < ubase:
            for s in singles:
                r = s(q, arr, lo, hi)
                if r is not None:
                    return r
            return None
        toid = (arr[a] & SK_MASK) >> REL_BITS
        tid = obj_type[toid]
        f = targets.get(tid)
        if f is None:
            if tid in skip:
                return None
            raise _Fallback  # a type interned after compilation
        memo = q.memo
        mk = toid << 16 | slots[tid]
        if mk in memo:
            r = memo[mk]
        else:
            r = memo[mk] = f(q, toid)
        if r is not None:
            return f"{tupleset}->{names[toid]} > {r}"
        return None

    ntypes = len(it.type_names)
    spec = (_K_MULTI, base, ubase, 0, tupleset, "", tuple(singles), (targets, skip, ntypes))
    return prog.keep(multi, depth, spec)


def _closure_of(
    snap: Snapshot, sk: int, wk: int, rids: list[int], max_depth: int
) -> tuple[set[int], bool]:
    return _closure_of_rev(snap.rev, sk, wk, rids, max_depth)


def _closure_of_rev(
    rev: Callable[[int], Sequence[int]], sk: int, wk: int, rids: list[int], max_depth: int
) -> tuple[set[int], bool]:
    """Every userset key the subject (`sk`, wildcard `wk`) belongs to through `rids`.

    Breadth-first over the reverse index, so cycles end; a chain longer than `max_depth`
    returns truncated=True (a miss is then a depth error, not a deny).
    """
    keys: set[int] = set()
    frontier = [k for k in (sk, wk) if k >= 0]
    level = 0
    while frontier and level < max_depth:
        nxt: list[int] = []
        for k in frontier:
            base = k << REL_BITS
            for r in rids:
                for p in rev(base | r):
                    uk = p << REL_BITS | r
                    if uk not in keys:
                        keys.add(uk)
                        nxt.append(uk)
        frontier = nxt
        level += 1
    return keys, bool(frontier)


def _closure_packed(
    snap: Snapshot, sk: int, wk: int, rids: list[int], max_depth: int
) -> tuple[set[int], bool]:
    """`_closure_of_rev` reading the packed reverse index directly (same result)."""
    keys: set[int] = set()
    frontier = [k for k in (sk, wk) if k >= 0]
    level = 0
    rblock = snap.rblock
    while frontier and level < max_depth:
        nxt: list[int] = []
        for k in frontier:
            arr, lo, hi = rblock(k >> REL_BITS)
            if lo == hi:
                continue
            srid = (k & REL_MASK) << REL_BITS
            for r in rids:
                start = (srid | r) << R_REL
                a = bisect_left(arr, start, lo, hi)
                if a == hi:
                    continue
                stop = start + R_STEP
                if arr[a] >= stop:
                    continue
                for x in arr[a : bisect_left(arr, stop, a, hi)]:
                    uk = (x - start) << REL_BITS | r
                    if uk not in keys:
                        keys.add(uk)
                        nxt.append(uk)
        frontier = nxt
        level += 1
    return keys, bool(frontier)
