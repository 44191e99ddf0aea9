"""Tokens and passwords: only hashes are stored.

Invitation and password-reset tokens are 256-bit random values; the SoR keeps their SHA-256
(a token is high-entropy, so a fast hash is enough). Passwords are hashed with scrypt and a
random salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1


def new_token() -> str:
    # Drawn again when it starts with "-": `gatehouse admin user accept TOKEN` would parse
    # it as an option (1 draw in 64; it failed a CI run). A bit under 256 bits remain.
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${h.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), want)
