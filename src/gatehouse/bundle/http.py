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
from gatehouse.bundle.errors import BundleError
from gatehouse.bundle.loader import MAX_BYTES, Bundle, Limits, load_bundle_bytes
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


class BundlePoller:
    def __init__(
        self,
        url: str,
        state: DecisionState,
        verifier: Verifier | None = None,
        last_good_dir: str | Path | None = None,
        limits: Limits | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.state = state
        self.verifier = verifier
        self.last_good_dir = Path(last_good_dir) if last_good_dir is not None else None
        self.limits = limits or Limits()
        self.timeout = timeout
        self.etag: str | None = None

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
                    return PollResult("rejected", f"response larger than {cap} bytes")
                tag = resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            if e.code == 304:
                return PollResult("not-modified")
            return PollResult("error", f"HTTP {e.code} from {self.url}")
        except (urllib.error.URLError, OSError) as e:
            return PollResult("error", f"{self.url}: {e}")
        result = self._install(data, persist=True)
        if result.status == "activated":
            self.etag = tag
        return result

    def _install(self, data: bytes, persist: bool) -> PollResult:
        try:
            bundle = load_bundle_bytes(data, self.verifier, self.limits)
            activate(self.state, bundle)
        except (BundleError, PolicyRollback) as e:
            return PollResult("rejected", str(e))
        if persist and self.last_good_dir is not None:
            persist_last_good(data, self.last_good_dir)
        return PollResult("activated", f"{bundle.manifest.name}@{bundle.manifest.revision}", bundle)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Poll every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            self.poll_once()
            stop.wait(interval)
