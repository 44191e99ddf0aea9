"""Bundle signatures: `.signatures.json` holds one JWT listing every file and its SHA-256.

    {"signatures": ["<JWT>"]}

The JWT header carries `alg` (EdDSA for Ed25519 keys, RS256 for RSA keys) and `kid`; the
payload is `{"files": [{"name", "hash", "algorithm": "SHA-256"}], "keyid", "iat", "scope"?}`.
Verification happens whenever a key is configured, whether or not the file is present.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gatehouse.bundle.errors import BundleError, DigestMismatch, SignatureError

SIGNATURES_FILE = ".signatures.json"
HASH_ALGORITHM = "SHA-256"

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _alg_for_private(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    raise BundleError(f"unsupported signing key type {type(key).__name__}")


def allowed_algorithms(key: PublicKey) -> list[str]:
    """The only JWT algorithms accepted for a verification key of this type."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ["EdDSA"]
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    raise BundleError(f"unsupported verification key type {type(key).__name__}")


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise BundleError(f"cannot read private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise BundleError("private key must be Ed25519 or RSA")
    return key


def load_public_key(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise BundleError(f"cannot read public key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise BundleError("public key must be Ed25519 or RSA")
    return key


def signed_files(files: Mapping[str, bytes]) -> list[dict[str, str]]:
    """The signed file list: every file except the signatures file, sorted by name."""
    return [
        {"name": n, "hash": sha256_hex(files[n]), "algorithm": HASH_ALGORITHM}
        for n in sorted(files)
        if n != SIGNATURES_FILE
    ]


def sign_files(
    files: Mapping[str, bytes],
    key: PrivateKey,
    key_id: str,
    scope: str | None = None,
    iat: int | None = None,
) -> bytes:
    """The contents of `.signatures.json` for `files` (any existing signatures file ignored)."""
    payload: dict[str, Any] = {
        "files": signed_files(files),
        "keyid": key_id,
        "iat": int(time.time()) if iat is None else iat,
    }
    if scope is not None:
        payload["scope"] = scope
    token = jwt.encode(payload, key, algorithm=_alg_for_private(key), headers={"kid": key_id})
    return (json.dumps({"signatures": [token]}, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Verifier:
    """Trusted keys by key id; `scope`, when set, must equal the token's `scope` claim."""

    keys: Mapping[str, PublicKey]
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    key_id: str
    algorithm: str
    iat: int
    scope: str | None


def read_signature_unverified(files: Mapping[str, bytes]) -> dict[str, Any] | None:
    """Header and payload of the signature without verifying it (for `inspect`)."""
    raw = files.get(SIGNATURES_FILE)
    if raw is None:
        return None
    try:
        token = _single_token(raw)
        return {
            "header": jwt.get_unverified_header(token),
            "payload": jwt.decode(token, options={"verify_signature": False}),
        }
    except (BundleError, jwt.PyJWTError) as e:
        return {"error": str(e)}


def _single_token(raw: bytes) -> str:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SignatureError(f"{SIGNATURES_FILE} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("signatures"), list):
        raise SignatureError(f'{SIGNATURES_FILE} must be {{"signatures": [JWT]}}')
    sigs = doc["signatures"]
    if len(sigs) != 1:
        raise SignatureError(
            f"{SIGNATURES_FILE} must hold exactly one signature, found {len(sigs)}"
        )
    if not isinstance(sigs[0], str):
        raise SignatureError(f"{SIGNATURES_FILE}: the signature must be a JWT string")
    return sigs[0]


def verify_files(files: Mapping[str, bytes], verifier: Verifier) -> SignatureInfo:
    """Check the signature over `files`; raise BundleError with the reason on any problem."""
    raw = files.get(SIGNATURES_FILE)
    if raw is None:
        raise SignatureError(f"bundle is not signed: {SIGNATURES_FILE} is missing")
    token = _single_token(raw)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise SignatureError(f"signature is not a valid JWT: {e}") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureError("signature header has no key id (kid)")
    key = verifier.keys.get(kid)
    if key is None:
        raise SignatureError(f"signature key id {kid!r} is not a trusted key")
    algorithms = allowed_algorithms(key)
    alg = header.get("alg")
    if alg not in algorithms:
        raise SignatureError(
            f"signature algorithm {alg!r} is not allowed for key {kid!r} (allowed: {algorithms})"
        )
    try:
        payload = jwt.decode(
            token, key, algorithms=algorithms, options={"require": ["iat"], "verify_aud": False}
        )
    except jwt.InvalidSignatureError:
        raise SignatureError(f"signature does not verify with key {kid!r}") from None
    except jwt.PyJWTError as e:
        raise SignatureError(f"signature rejected: {e}") from None
    if payload.get("keyid") != kid:
        raise SignatureError(
            f"signed keyid {payload.get('keyid')!r} does not match header kid {kid!r}"
        )
    scope = payload.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise SignatureError("signed scope must be a string")
    if verifier.scope is not None and scope != verifier.scope:
        raise SignatureError(
            f"signed scope {scope!r} does not match required scope {verifier.scope!r}"
        )
    _compare_files(files, payload.get("files"))
    return SignatureInfo(kid, str(alg), int(payload["iat"]), scope)


def _compare_files(files: Mapping[str, bytes], listed: Any) -> None:
    if not isinstance(listed, list):
        raise SignatureError("signed payload has no `files` list")
    signed: dict[str, str] = {}
    for entry in listed:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("hash"), str)
        ):
            raise SignatureError("signed file entries must have a `name` and a `hash`")
        if entry.get("algorithm") != HASH_ALGORITHM:
            raise SignatureError(
                f"signed file {entry['name']!r}: unsupported hash algorithm "
                f"{entry.get('algorithm')!r}"
            )
        if entry["name"] in signed:
            raise SignatureError(f"signed file {entry['name']!r} is listed twice")
        signed[entry["name"]] = entry["hash"].lower()
    actual = {n for n in files if n != SIGNATURES_FILE}
    added = sorted(actual - signed.keys())
    removed = sorted(signed.keys() - actual)
    if added or removed:
        parts = []
        if added:
            parts.append(f"not signed: {', '.join(added)}")
        if removed:
            parts.append(f"signed but missing: {', '.join(removed)}")
        raise DigestMismatch("bundle files differ from the signed list (" + "; ".join(parts) + ")")
    for name in sorted(actual):
        if sha256_hex(files[name]) != signed[name]:
            raise DigestMismatch(
                f"digest mismatch for {name}: contents differ from the signed hash"
            )


def verifier_from_file(pubkey: str | None, key_id: str) -> Verifier | None:
    """A verifier for one PEM public key file (None when no key is configured: then
    bundles are not verified, and unsigned ones load)."""
    if not pubkey:
        return None
    with open(pubkey, "rb") as f:
        return Verifier({key_id: load_public_key(f.read())})
