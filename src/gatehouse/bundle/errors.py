"""Errors raised while loading, verifying, testing or activating a policy bundle."""

from __future__ import annotations


class BundleError(ValueError):
    """The bundle is invalid, hostile or fails signature verification. `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SignatureError(BundleError):
    """The signature is missing, malformed, untrusted or does not verify."""


class DigestMismatch(SignatureError):
    """The signature verifies, but the bundle's files differ from the signed file list."""


class AssertionsFailed(BundleError):
    """The bundle is well formed but at least one of its own assertions fails."""

    def __init__(self, reason: str, failures: list[object]) -> None:
        super().__init__(reason)
        self.failures = failures
