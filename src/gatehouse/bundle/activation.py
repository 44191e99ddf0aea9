"""Activate a verified bundle in a DecisionState, and keep the last good bundle on disk."""

from __future__ import annotations

from pathlib import Path

from gatehouse.bundle.assertions import run_assertions
from gatehouse.bundle.errors import AssertionsFailed
from gatehouse.bundle.loader import Bundle
from gatehouse.engine.state import DecisionState, Policy
from gatehouse.files import atomic_write

LAST_GOOD_NAME = "last-good.tar.gz"


def activate(state: DecisionState, bundle: Bundle, allow_rollback: bool = False) -> Policy:
    """Run the bundle's own assertions; only if all pass, make it the active policy.

    Raises AssertionsFailed (nothing changes) or PolicyRollback (an older revision offered
    without `allow_rollback`; nothing changes).
    """
    results = run_assertions(bundle.schema, bundle.files)
    failures = [r for r in results if not r.passed]
    if failures:
        first = failures[0]
        raise AssertionsFailed(
            f"bundle {bundle.manifest.name} revision {bundle.manifest.revision}: "
            f"{len(failures)} of {len(results)} assertions fail "
            f"(first: {first.file} {first.id}: {first.message})",
            list(failures),
        )
    return state.activate_policy(
        bundle.schema,
        bundle.manifest.name,
        bundle.manifest.revision,
        bundle.digest,
        allow_rollback=allow_rollback,
    )


def persist_last_good(
    bundle_bytes: bytes, directory: str | Path, name: str = LAST_GOOD_NAME
) -> Path:
    """Atomically write `bundle_bytes` to `directory/name` (temp file, fsync, rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return atomic_write(d / name, lambda f: f.write(bundle_bytes))
