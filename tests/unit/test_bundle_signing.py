"""Signature matrix: every way a signed bundle can be forged, stripped or tampered with."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gatehouse.bundle import (
    SIGNATURES_FILE,
    BundleError,
    Verifier,
    load_bundle_bytes,
    load_private_key,
    load_public_key,
    make_bundle,
    read_directory,
    sign_files,
    verify_files,
    write_archive,
)
from gatehouse.bundle.signing import signed_files

ROOT = Path(__file__).resolve().parents[2]
FILES = read_directory(ROOT / "bundles" / "ontra")

ED = ed25519.Ed25519PrivateKey.generate()
ED_OTHER = ed25519.Ed25519PrivateKey.generate()
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)

Files = dict[str, bytes]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(files: Files, kid: str = "k1") -> dict[str, Any]:
    return {"files": signed_files(files), "keyid": kid, "iat": int(time.time())}


def _sigfile(*tokens: str) -> bytes:
    return json.dumps({"signatures": list(tokens)}).encode()


def _signed(key: Any, kid: str = "k1", scope: str | None = None) -> Files:
    return {**FILES, SIGNATURES_FILE: sign_files(FILES, key, kid, scope=scope)}


def _unsigned_token(files: Files) -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    return f"{head}.{_b64(json.dumps(_payload(files)).encode())}."


def _hs256_with_public_pem(files: Files) -> str:
    """Algorithm confusion: HMAC keyed with the verifier's public key bytes."""
    secret = ED.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = _b64(json.dumps(_payload(files)).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _with(files: Files, changes: dict[str, bytes | None]) -> Files:
    out = dict(files)
    for name, data in changes.items():
        if data is None:
            out.pop(name, None)
        else:
            out[name] = data
    return out


def _renamed(files: Files) -> Files:
    out = dict(files)
    out["data/renamed.yaml"] = out.pop("data/roles.yaml")
    return out


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Files]
    verifier: Verifier | None
    error: str | None  # None: must verify/load


ED_V = Verifier({"k1": ED.public_key()})
RSA_V = Verifier({"k1": RSA.public_key()})

CASES = [
    Case("ed25519-ok", lambda: _signed(ED), ED_V, None),
    Case("rsa-ok", lambda: _signed(RSA), RSA_V, None),
    Case("scope-ok", lambda: _signed(ED, scope="prod"), Verifier(ED_V.keys, "prod"), None),
    Case("no-key-unsigned-ok", lambda: dict(FILES), None, None),
    Case(
        "no-key-tampered-not-checked",
        lambda: _with(_signed(ED), {"schema.zed": FILES["schema.zed"] + b"\n"}),
        None,
        None,
    ),
    Case("missing-signatures", lambda: dict(FILES), ED_V, "not signed"),
    Case(
        "stripped-signatures",
        lambda: _with(_signed(ED), {SIGNATURES_FILE: None}),
        ED_V,
        "not signed",
    ),
    Case("empty-list", lambda: {**FILES, SIGNATURES_FILE: _sigfile()}, ED_V, "exactly one"),
    Case(
        "two-jwts",
        lambda: {
            **FILES,
            SIGNATURES_FILE: _sigfile(
                *(json.loads(_signed(ED)[SIGNATURES_FILE])["signatures"] * 2)
            ),
        },
        ED_V,
        "exactly one",
    ),
    Case("not-json", lambda: {**FILES, SIGNATURES_FILE: b"{"}, ED_V, "not valid JSON"),
    Case("wrong-shape", lambda: {**FILES, SIGNATURES_FILE: b'{"sigs": []}'}, ED_V, "must be"),
    Case(
        "garbage-jwt",
        lambda: {**FILES, SIGNATURES_FILE: _sigfile("a.b.c")},
        ED_V,
        "not a valid JWT",
    ),
    Case("wrong-ed-key", lambda: _signed(ED_OTHER), ED_V, "does not verify"),
    Case("rsa-token-ed-key", lambda: _signed(RSA), ED_V, "not allowed"),
    Case("ed-token-rsa-key", lambda: _signed(ED), RSA_V, "not allowed"),
    Case(
        "alg-none",
        lambda: {**FILES, SIGNATURES_FILE: _sigfile(_unsigned_token(FILES))},
        ED_V,
        "not allowed",
    ),
    Case(
        "hs256-confusion",
        lambda: {**FILES, SIGNATURES_FILE: _sigfile(_hs256_with_public_pem(FILES))},
        ED_V,
        "not allowed",
    ),
    Case("unknown-kid", lambda: _signed(ED, kid="someone-else"), ED_V, "not a trusted key"),
    Case(
        "scope-mismatch", lambda: _signed(ED, scope="staging"), Verifier(ED_V.keys, "prod"), "scope"
    ),
    Case("scope-required-absent", lambda: _signed(ED), Verifier(ED_V.keys, "prod"), "scope"),
    Case(
        "file-added",
        lambda: _with(_signed(ED), {"data/extra.yaml": b"x: 1\n"}),
        ED_V,
        "not signed: data/extra.yaml",
    ),
    Case(
        "file-removed",
        lambda: _with(_signed(ED), {"tests/rules.yaml": None}),
        ED_V,
        "signed but missing: tests/rules.yaml",
    ),
    Case("file-renamed", lambda: _renamed(_signed(ED)), ED_V, "differ from the signed list"),
    Case(
        "content-changed",
        lambda: _with(_signed(ED), {"schema.zed": FILES["schema.zed"] + b"\n"}),
        ED_V,
        "digest mismatch for schema.zed",
    ),
    Case(
        "rsa-content-changed",
        lambda: _with(_signed(RSA), {"fixture.yaml": b"relationships: []\n"}),
        RSA_V,
        "digest mismatch for fixture.yaml",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_signature_matrix(case: Case) -> None:
    files = case.make()
    archive = write_archive(files)
    if case.error is None:
        bundle = load_bundle_bytes(archive, case.verifier)
        assert bundle.manifest.name == "ontra"
        assert (bundle.signature is not None) == (case.verifier is not None)
        if case.verifier is not None:
            assert bundle.signature is not None and bundle.signature.key_id == "k1"
    else:
        with pytest.raises(BundleError, match=case.error):
            load_bundle_bytes(archive, case.verifier)
        with pytest.raises(BundleError, match=case.error):
            verify_files(files, case.verifier) if case.verifier else make_bundle(files)


def test_signature_is_a_jwt_with_the_documented_claims() -> None:
    doc = json.loads(_signed(ED, kid="release", scope="prod")[SIGNATURES_FILE])
    [token] = doc["signatures"]
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT", "kid": "release"}
    claims = jwt.decode(token, ED.public_key(), algorithms=["EdDSA"])
    assert claims["keyid"] == "release" and claims["scope"] == "prod" and claims["iat"] > 0
    names = [f["name"] for f in claims["files"]]
    assert names == sorted(n for n in FILES)
    assert all(f["algorithm"] == "SHA-256" and len(f["hash"]) == 64 for f in claims["files"])


def test_digest_ignores_the_signatures_file() -> None:
    plain = make_bundle(dict(FILES))
    signed = make_bundle(_signed(ED), ED_V)
    assert plain.digest == signed.digest


def test_pem_round_trip() -> None:
    pem = ED.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = ED.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    files = {**FILES, SIGNATURES_FILE: sign_files(FILES, load_private_key(pem), "k1")}
    verify_files(files, Verifier({"k1": load_public_key(pub)}))
    with pytest.raises(BundleError, match="cannot read public key"):
        load_public_key(b"not a key")
