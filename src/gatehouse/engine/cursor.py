"""Opaque, MAC'd pagination cursors: a client can hold one but never forge or edit one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from bisect import bisect_right
from collections.abc import Sequence


class InvalidCursor(ValueError):
    """A cursor that was tampered with, truncated, forged, or minted for another query."""


class CursorCodec:
    """Signs cursors with a per-deployment key; binds each one to its query."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("cursor key must be at least 16 bytes")
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def encode(self, query: str, after: str) -> str:
        body = json.dumps({"q": query, "a": after}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def decode(self, query: str, cursor: str) -> str:
        """Return the last id of the previous page, or raise InvalidCursor."""
        if len(cursor) > 4096:
            raise InvalidCursor("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, TypeError) as e:
            raise InvalidCursor("cursor is not valid base64") from e
        mac, body = raw[:16], raw[16:]
        if len(mac) != 16 or not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidCursor("cursor signature does not match")
        try:
            data = json.loads(body)
        except ValueError as e:  # pragma: no cover - MAC'd bodies are ours
            raise InvalidCursor("cursor body is not JSON") from e
        if (
            not isinstance(data, dict)
            or data.get("q") != query
            or not isinstance(data.get("a"), str)
        ):
            raise InvalidCursor("cursor belongs to another query")
        return str(data["a"])


def page_after(ids: Sequence[str], after: str | None, limit: int) -> tuple[list[str], str | None]:
    """One page of sorted `ids` strictly after `after`; the second item is the page's last id
    when more remain, else None."""
    start = 0 if after is None else bisect_right(ids, after)
    chunk = list(ids[start : start + limit])
    more = start + limit < len(ids)
    return chunk, (chunk[-1] if more and chunk else None)
