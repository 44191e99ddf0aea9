"""The live decision state: the active policy and the graph, each swapped atomically.

Adapters (the gRPC servicer, the bundle activator, the feed client) share one
`DecisionState`. Policy and data change independently; a reader takes one `View`
(policy + snapshot) and answers from it, so it never mixes two revisions of either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gatehouse.engine.evaluator import DEFAULT_MAX_DEPTH, Evaluator
from gatehouse.engine.validate import ShapeCheck, validate_delta
from gatehouse.graph import persist
from gatehouse.graph.persist import SnapshotFileError
from gatehouse.graph.store import GraphStore, Snapshot
from gatehouse.graph.tuples import Delta, Tuple, parse_tuple
from gatehouse.model.compiler import CompiledSchema


class NotReady(Exception):
    """No policy or no data is active yet: every decision must fail (and so deny)."""


class PolicyRollback(ValueError):
    """A policy older than the active one was offered without an explicit override."""


@dataclass(frozen=True, slots=True)
class Policy:
    evaluator: Evaluator
    name: str
    revision: int
    digest: str = ""

    @property
    def schema(self) -> CompiledSchema:
        return self.evaluator.schema


@dataclass(frozen=True, slots=True)
class View:
    policy: Policy
    snapshot: Snapshot


class DecisionState:
    """Thread-safe holder of the active policy and the graph store.

    Obligations: `activate_policy`, `load_data` and `apply_delta` either succeed completely
    or raise and leave everything as it was. `view()` never blocks on a writer.
    """

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_depth = max_depth
        self.store = GraphStore()
        self._policy: Policy | None = None
        self._data_ready = False
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy | None:
        return self._policy

    @property
    def data_ready(self) -> bool:
        return self._data_ready

    @property
    def ready(self) -> bool:
        return self._policy is not None and self._data_ready

    def view(self) -> View:
        policy = self._policy
        if policy is None:
            raise NotReady("no policy bundle is active yet")
        if not self._data_ready:
            raise NotReady("no data snapshot has been loaded yet")
        return View(policy, self.store.current)

    def activate_policy(
        self,
        schema: CompiledSchema,
        name: str,
        revision: int,
        digest: str = "",
        allow_rollback: bool = False,
    ) -> Policy:
        with self._lock:
            cur = self._policy
            if cur is not None and not allow_rollback and revision < cur.revision:
                raise PolicyRollback(
                    f"bundle revision {revision} is older than the active revision {cur.revision}"
                )
            policy = Policy(Evaluator(schema, self.max_depth), name, revision, digest)
            self._policy = policy
            return policy

    def load_data(self, tuples: Iterable[Tuple | str], revision: int) -> Snapshot:
        """Replace the whole graph (initial sync or restore from disk). Every tuple is
        checked against the active policy as the store consumes it; a refused one aborts
        the load before anything is published."""
        policy = self._policy

        def checked() -> Iterator[Tuple]:
            shapes = ShapeCheck(policy.schema) if policy is not None else None
            for t in tuples:
                p = parse_tuple(t) if isinstance(t, str) else t
                if shapes is not None:
                    shapes.check(p)
                yield p

        snap = self.store.load(checked(), revision)
        self._data_ready = True
        return snap

    def load_packed(self, data: bytes) -> Snapshot:
        """Restore the graph from a binary snapshot file (`gatehouse.graph.persist`) into an
        empty state. Only a file written under the very policy now active (same digest) is
        accepted: its tuples were validated against that policy when they were applied."""
        policy = self._policy
        if policy is None or not policy.digest:
            raise SnapshotFileError("no identified policy is active: cannot trust the file")
        # The digest is checked before anything is published.
        peek = persist.header(data)
        if peek.get("meta", {}).get("policy_digest") != policy.digest:
            raise SnapshotFileError("the file was written under another policy")
        snap, _meta = persist.load(self.store, data)
        self._data_ready = True
        return snap

    def apply_delta(self, delta: Delta, revision: int | None = None) -> Snapshot:
        policy = self._policy
        if policy is not None:
            validate_delta(policy.schema, delta)
        return self.store.apply(delta, revision)

    def wait_for_revision(self, revision: int, timeout: float | None) -> Snapshot | None:
        return self.store.wait_for(revision, timeout)
