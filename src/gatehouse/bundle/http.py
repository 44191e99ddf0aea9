"""Distribute bundles over HTTP: a tiny archive server and a polling client.

The server answers `GET /bundle.tar.gz` with the archive bytes and a strong `ETag`
(the archive's SHA-256), and `304 Not Modified` for a matching `If-None-Match`. The poller
fetches, loads (hostile-archive checks, signature when a key is configured), runs the
bundle's assertions, activates it and persists it as the last good bundle. Any failure
leaves the active policy as it was and is reported in `PollResult`.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gatehouse.bundle.activation import LAST_GOOD_NAME, activate, persist_last_good
from gatehouse.bundle.errors import AssertionsFailed, BundleError, DigestMismatch, SignatureError
from gatehouse.bundle.loader import (
    MANIFEST_FILE,
    MAX_BYTES,
    Bundle,
    Limits,
    make_bundle,
    parse_manifest,
    read_archive,
)
from gatehouse.bundle.signing import Verifier
from gatehouse.engine.state import DecisionState, PolicyRollback

BUNDLE_PATH = "/bundle.tar.gz"


def etag_for(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def make_server(
    source: Callable[[], bytes], host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """An HTTP server whose `GET /bundle.tar.gz` returns `source()` (called per request)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != BUNDLE_PATH:
                self.send_error(404)
                return
            data = source()
            tag = etag_for(data)
            if self.headers.get("If-None-Match") == tag:
                self.send_response(304)
                self.send_header("ETag", tag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", tag)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


@dataclass(frozen=True, slots=True)
class PollResult:
    status: str  # activated | not-modified | rejected | error
    detail: str = ""
    bundle: Bundle | None = None
    # For rejected/error: a short fixed category (download, archive, signature, digest,
    # schema, assertions, rollback) and the rejected bundle's revision (0 when unknown).
    category: str = ""
    revision: int = 0


RejectHook = Callable[[str, str, int], object]  # (category, detail, revision)


def _peek_revision(files: dict[str, bytes]) -> int:
    """The manifest revision of a bundle that may yet be rejected (0 when unreadable)."""
    raw = files.get(MANIFEST_FILE)
    if raw is None:
        return 0
    try:
        return parse_manifest(raw).revision
    except BundleError:
        return 0


class BundlePoller:
    """Fetch, verify, test and activate bundles from a URL.

    `on_reject(category, detail, revision)` is called once for every rejected bundle (the
    same bytes offered again are not re-verified) and for every failed fetch; `on_current()`
    whenever the active policy is confirmed current (a bundle was activated, or the source
    answered `304 Not Modified`).
    """

    def __init__(
        self,
        url: str,
        state: DecisionState,
        verifier: Verifier | None = None,
        last_good_dir: str | Path | None = None,
        limits: Limits | None = None,
        timeout: float = 10.0,
        on_reject: RejectHook | None = None,
        on_current: Callable[[], object] | None = None,
        allow_rollback: bool = False,
    ) -> None:
        self.allow_rollback = allow_rollback
        self.url = url
        self.state = state
        self.verifier = verifier
        self.last_good_dir = Path(last_good_dir) if last_good_dir is not None else None
        self.limits = limits or Limits()
        self.timeout = timeout
        self.etag: str | None = None
        # The ETag and result of the last rejected bundle: the same bytes are not verified,
        # logged or counted again on every poll (`on_reject` is called once per bundle).
        self._rejected: tuple[str, PollResult] | None = None
        self.on_reject = on_reject
        self.on_current = on_current

    def _fail(self, status: str, category: str, detail: str, revision: int = 0) -> PollResult:
        if self.on_reject is not None:
            self.on_reject(category, detail, revision)
        return PollResult(status, detail, category=category, revision=revision)

    def restore_last_good(self) -> PollResult:
        """Activate the persisted last good bundle, if any (used at start-up)."""
        if self.last_good_dir is None:
            return PollResult("error", "no last-good directory configured")
        path = self.last_good_dir / LAST_GOOD_NAME
        try:
            data = path.read_bytes()
        except OSError as e:
            return PollResult("error", f"{path}: {e}")
        return self._install(data, persist=False)

    def poll_once(self) -> PollResult:
        req = urllib.request.Request(self.url)
        if self.etag:
            req.add_header("If-None-Match", self.etag)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                cap = max(self.limits.max_total_bytes, MAX_BYTES)
                data = resp.read(cap + 1)
                if len(data) > cap:
                    return self._fail("rejected", "download", f"response larger than {cap} bytes")
                tag = resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            if e.code == 304:
                if self.on_current is not None:
                    self.on_current()
                return PollResult("not-modified")
            return self._fail("error", "download", f"HTTP {e.code} from {self.url}")
        except (urllib.error.URLError, OSError) as e:
            return self._fail("error", "download", f"{self.url}: {e}")
        if tag and self._rejected is not None and self._rejected[0] == tag:
            return self._rejected[1]
        result = self._install(data, persist=True)
        if result.status == "activated":
            self.etag = tag
            self._rejected = None
        elif result.status == "rejected" and tag:
            self._rejected = (tag, result)
        return result

    def _install(self, data: bytes, persist: bool) -> PollResult:
        try:
            files = read_archive(data, self.limits)
        except BundleError as e:
            return self._fail("rejected", "archive", str(e))
        revision = _peek_revision(files)
        try:
            bundle = make_bundle(files, self.verifier)
        except DigestMismatch as e:
            return self._fail("rejected", "digest", str(e), revision)
        except SignatureError as e:
            return self._fail("rejected", "signature", str(e), revision)
        except BundleError as e:
            return self._fail("rejected", "schema", str(e), revision)
        try:
            activate(self.state, bundle, allow_rollback=self.allow_rollback)
        except AssertionsFailed as e:
            return self._fail("rejected", "assertions", str(e), revision)
        except (BundleError, PolicyRollback) as e:
            return self._fail("rejected", "rollback", str(e), revision)
        if persist and self.last_good_dir is not None:
            persist_last_good(data, self.last_good_dir)
        if self.on_current is not None:
            self.on_current()
        return PollResult(
            "activated",
            f"{bundle.manifest.name}@{bundle.manifest.revision}",
            bundle,
            revision=bundle.manifest.revision,
        )

    def run(self, interval: float, stop: threading.Event) -> None:
        """Poll every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            self.poll_once()
            stop.wait(interval)
