"""Policy bundles: load (hostile-archive safe), sign/verify, build, test and activate."""

from gatehouse.bundle.activation import activate, persist_last_good
from gatehouse.bundle.assertions import AssertionResult, assertion_files, run_assertions
from gatehouse.bundle.build import set_revision, write_archive
from gatehouse.bundle.errors import AssertionsFailed, BundleError
from gatehouse.bundle.loader import (
    MAX_BYTES,
    MAX_ENTRIES,
    Bundle,
    Limits,
    Manifest,
    bundle_digest,
    load_bundle,
    load_bundle_bytes,
    make_bundle,
    parse_manifest,
    read_archive,
    read_directory,
    read_files,
)
from gatehouse.bundle.signing import (
    SIGNATURES_FILE,
    SignatureInfo,
    Verifier,
    allowed_algorithms,
    load_private_key,
    load_public_key,
    sign_files,
    verify_files,
)

__all__ = [
    "MAX_BYTES",
    "MAX_ENTRIES",
    "SIGNATURES_FILE",
    "AssertionResult",
    "AssertionsFailed",
    "Bundle",
    "BundleError",
    "Limits",
    "Manifest",
    "SignatureInfo",
    "Verifier",
    "activate",
    "allowed_algorithms",
    "assertion_files",
    "bundle_digest",
    "load_bundle",
    "load_bundle_bytes",
    "load_private_key",
    "load_public_key",
    "make_bundle",
    "parse_manifest",
    "persist_last_good",
    "read_archive",
    "read_directory",
    "read_files",
    "run_assertions",
    "set_revision",
    "sign_files",
    "verify_files",
    "write_archive",
]
