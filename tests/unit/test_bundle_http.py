"""Bundle distribution over HTTP: poll, verify, test, activate, persist; reject bad bundles."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gatehouse.bundle import SIGNATURES_FILE, Verifier, read_directory, set_revision, sign_files
from gatehouse.bundle import write_archive as archive
from gatehouse.bundle.http import BundlePoller, make_server
from gatehouse.engine import DecisionState

ROOT = Path(__file__).resolve().parents[2]
KEY = ed25519.Ed25519PrivateKey.generate()
VERIFIER = Verifier({"k1": KEY.public_key()})


def _signed(revision: int, extra: dict[str, bytes] | None = None) -> bytes:
    files = set_revision(read_directory(ROOT / "bundles" / "ontra"), revision)
    files[SIGNATURES_FILE] = sign_files(files, KEY, "k1")
    files.update(extra or {})
    return archive(files)


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> bytes:
        return self.data


@pytest.fixture
def served() -> Iterator[tuple[Source, str]]:
    src = Source(_signed(1))
    server = make_server(src)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    host, port = server.server_address[:2]
    yield src, f"http://{host!s}:{port}/bundle.tar.gz"
    server.shutdown()
    server.server_close()


def test_poll_activate_not_modified_and_upgrade(served: tuple[Source, str], tmp_path: Path) -> None:
    src, url = served
    state = DecisionState()
    poller = BundlePoller(url, state, VERIFIER, last_good_dir=tmp_path)
    r = poller.poll_once()
    assert r.status == "activated", r.detail
    assert state.policy is not None and state.policy.revision == 1
    assert poller.poll_once().status == "not-modified"
    src.data = _signed(2)
    assert poller.poll_once().status == "activated"
    assert state.policy.revision == 2
    assert (tmp_path / "last-good.tar.gz").read_bytes() == src.data


def _tampered_schema() -> bytes:
    files = set_revision(read_directory(ROOT / "bundles" / "ontra"), 5)
    files[SIGNATURES_FILE] = sign_files(files, KEY, "k1")
    files["schema.zed"] += b"\n// edited after signing\n"
    return archive(files)


def _signed_bad_schema() -> bytes:
    files = set_revision(read_directory(ROOT / "bundles" / "ontra"), 5)
    files["schema.zed"] = b"definition user {\n"
    files[SIGNATURES_FILE] = sign_files(files, KEY, "k1")
    return archive(files)


@pytest.mark.parametrize(
    ("bad", "reason", "category", "revision"),
    [
        (lambda: _signed(5, {"data/extra.yaml": b"x: 1\n"}), "not signed", "digest", 5),
        (lambda: archive(read_directory(ROOT / "bundles" / "ontra")), "not signed", "signature", 1),
        (
            lambda: _signed(
                5,
                {
                    "tests/broken.yaml": b"fixture: ../fixture.yaml\n"
                    b"checks: [[user:tina, delete, fund:fund_i, allow]]\n"
                },
            ),
            "not signed",
            "digest",
            5,
        ),
        (_tampered_schema, "digest mismatch for schema.zed", "digest", 5),
        (_signed_bad_schema, "invalid schema", "schema", 5),
        (lambda: _signed(1), "older", "rollback", 1),
        (lambda: b"\x1f\x8bnot really", "not a valid", "archive", 0),
    ],
    ids=[
        "tampered",
        "unsigned",
        "unsigned-extra-test",
        "edited-after-signing",
        "bad-schema",
        "rollback",
        "garbage",
    ],
)
def test_bad_bundle_keeps_active_policy(
    served: tuple[Source, str],
    tmp_path: Path,
    bad: Callable[[], bytes],
    reason: str,
    category: str,
    revision: int,
) -> None:
    src, url = served
    state = DecisionState()
    seen: list[tuple[str, str, int]] = []
    poller = BundlePoller(
        url, state, VERIFIER, last_good_dir=tmp_path, on_reject=lambda *a: seen.append(a)
    )
    src.data = _signed(3)
    assert poller.poll_once().status == "activated"
    good = (tmp_path / "last-good.tar.gz").read_bytes()
    src.data = bad()
    r = poller.poll_once()
    assert r.status == "rejected" and reason in r.detail, r.detail
    assert (r.category, r.revision) == (category, revision)
    assert seen == [(category, r.detail, revision)]
    assert state.policy is not None and state.policy.revision == 3
    assert (tmp_path / "last-good.tar.gz").read_bytes() == good


def test_failing_assertions_rejected_even_when_signed(
    served: tuple[Source, str], tmp_path: Path
) -> None:
    src, url = served
    files = set_revision(read_directory(ROOT / "bundles" / "ontra"), 9)
    files["tests/broken.yaml"] = (
        b"fixture: ../fixture.yaml\nchecks: [[user:tina, delete, fund:fund_i, allow]]\n"
    )
    files[SIGNATURES_FILE] = sign_files(files, KEY, "k1")
    src.data = archive(files)
    state = DecisionState()
    r = BundlePoller(url, state, VERIFIER).poll_once()
    assert r.status == "rejected" and "assertions fail" in r.detail
    assert (r.category, r.revision) == ("assertions", 9)
    assert state.policy is None


def test_same_rejected_bundle_is_reported_once(served: tuple[Source, str]) -> None:
    src, url = served
    seen: list[tuple[str, str, int]] = []
    state = DecisionState()
    poller = BundlePoller(url, state, VERIFIER, on_reject=lambda *a: seen.append(a))
    assert poller.poll_once().status == "activated"
    src.data = _signed(2, {"data/extra.yaml": b"x: 1\n"})
    first, again = poller.poll_once(), poller.poll_once()
    assert first.status == again.status == "rejected" and again.detail == first.detail
    assert len(seen) == 1
    src.data = archive(read_directory(ROOT / "bundles" / "ontra"))  # a different bad bundle
    assert poller.poll_once().category == "signature"
    assert [s[0] for s in seen] == ["digest", "signature"]
    assert state.policy is not None and state.policy.revision == 1


def test_on_current_called_for_activation_and_not_modified(served: tuple[Source, str]) -> None:
    _, url = served
    calls: list[int] = []
    poller = BundlePoller(url, DecisionState(), VERIFIER, on_current=lambda: calls.append(1))
    assert poller.poll_once().status == "activated"
    assert poller.poll_once().status == "not-modified"
    assert len(calls) == 2


def test_restore_last_good(served: tuple[Source, str], tmp_path: Path) -> None:
    _, url = served
    BundlePoller(url, DecisionState(), VERIFIER, last_good_dir=tmp_path).poll_once()
    fresh = DecisionState()
    r = BundlePoller("http://127.0.0.1:9/unused", fresh, VERIFIER, tmp_path).restore_last_good()
    assert r.status == "activated" and fresh.policy is not None


def test_unreachable_server_is_an_error() -> None:
    r = BundlePoller("http://127.0.0.1:9/bundle.tar.gz", DecisionState(), timeout=2).poll_once()
    assert r.status == "error" and r.category == "download"


def test_cli_bundle_serve() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatehouse.cli.main",
            "bundle",
            "serve",
            "bundles/ontra",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = resp.read()
        state = DecisionState()
        from gatehouse.bundle import activate, load_bundle_bytes

        assert activate(state, load_bundle_bytes(data)).name == "ontra"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rollback_only_with_the_explicit_override(served: tuple[Source, str]) -> None:
    src, url = served
    src.data = _signed(5)
    strict, lenient = DecisionState(), DecisionState()
    p1 = BundlePoller(url, strict, VERIFIER)
    p2 = BundlePoller(url, lenient, VERIFIER, allow_rollback=True)
    assert p1.poll_once().status == p2.poll_once().status == "activated"
    src.data = _signed(4)
    r = p1.poll_once()
    assert (r.status, r.category) == ("rejected", "rollback")
    assert strict.policy is not None and strict.policy.revision == 5
    assert p2.poll_once().status == "activated"
    assert lenient.policy is not None and lenient.policy.revision == 4
