"""Errors raised while loading, verifying, testing or activating a policy bundle."""

from __future__ import annotations


class BundleError(ValueError):
    """The bundle is invalid, hostile or fails signature verification. `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class AssertionsFailed(BundleError):
    """The bundle is well formed but at least one of its own assertions fails."""

    def __init__(self, reason: str, failures: list[object]) -> None:
        super().__init__(reason)
        self.failures = failures
