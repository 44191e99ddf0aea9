"""Bundle loading: hostile archives are rejected, builds are deterministic, round trips hold."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gatehouse.bundle import (
    BundleError,
    Limits,
    load_bundle,
    load_bundle_bytes,
    read_archive,
    read_directory,
    set_revision,
    write_archive,
)

ROOT = Path(__file__).resolve().parents[2]
ONTRA = ROOT / "bundles" / "ontra"

Adder = Callable[[tarfile.TarFile], None]


def _tgz(*adders: Adder) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for add in adders:
            add(tar)
    return gzip.compress(raw.getvalue())


def _file(name: str, data: bytes = b"x") -> Adder:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def _special(name: str, kind: bytes, linkname: str = "") -> Adder:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return add


def _zeros(name: str, size: int) -> Adder:
    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros()))

    return add


MIB = 1024 * 1024

HOSTILE: list[tuple[str, bytes, str]] = [
    ("dotdot", _tgz(_file("manifest.yaml"), _file("../evil")), "traversal"),
    ("nested-dotdot", _tgz(_file("data/../../evil")), "traversal"),
    ("absolute", _tgz(_file("/etc/passwd")), "absolute"),
    ("windows-absolute", _tgz(_file("C:/evil")), "absolute"),
    ("backslash", _tgz(_file("..\\evil")), "invalid name"),
    ("symlink", _tgz(_special("link", tarfile.SYMTYPE, "/etc/passwd")), "links"),
    ("hardlink", _tgz(_file("a"), _special("b", tarfile.LNKTYPE, "a")), "links"),
    ("chardev", _tgz(_special("dev", tarfile.CHRTYPE)), "regular files"),
    ("blockdev", _tgz(_special("dev", tarfile.BLKTYPE)), "regular files"),
    ("fifo", _tgz(_special("fifo", tarfile.FIFOTYPE)), "regular files"),
    ("duplicate", _tgz(_file("a", b"1"), _file("a", b"2")), "duplicate"),
    ("duplicate-normalised", _tgz(_file("a"), _file("./a")), "duplicate"),
    ("dir-file-clash", _tgz(_special("a", tarfile.DIRTYPE), _file("a")), "duplicate"),
    ("file-dir-clash", _tgz(_file("data"), _file("data/x.yaml")), "both a file and a directory"),
    ("too-many", _tgz(*[_file(f"f{i}") for i in range(1001)]), "more than 1000 entries"),
    ("bomb-member", _tgz(_zeros("zeros", 17 * MIB)), "larger than"),
    ("bomb-total", _tgz(_zeros("z1", 9 * MIB), _zeros("z2", 9 * MIB)), "exceed"),
    ("not-gzip", b"PK\x03\x04 not a tarball", "not a valid"),
    ("truncated", _tgz(_file("a", b"y" * 5000))[:-6], "not a valid"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in HOSTILE], ids=[n for n, *_ in HOSTILE]
)
def test_hostile_archive_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(BundleError, match=reason):
        read_archive(data)


def test_gzip_bomb_is_small_compressed() -> None:
    bomb = next(d for n, d, _ in HOSTILE if n == "bomb-member")
    assert len(bomb) < 100 * 1024  # the point of the bomb: tiny on the wire


def test_decompressed_stream_is_counted() -> None:
    """Even below the per-member header check, the decompressed byte count is enforced."""
    data = _tgz(_zeros("a", 40_000), _zeros("b", 40_000))
    with pytest.raises(BundleError):
        read_archive(data, Limits(max_entries=10, max_member_bytes=50_000, max_total_bytes=50_000))
    tiny = Limits(max_entries=1000, max_member_bytes=10**9, max_total_bytes=1000)
    with pytest.raises(BundleError):
        read_archive(_tgz(_zeros("a", 30_000)), tiny)


def test_plain_archive_reads_into_memory(tmp_path: Path) -> None:
    data = _tgz(_special("data", tarfile.DIRTYPE), _file("./data/x.yaml", b"k: v"), _file("m"))
    assert read_archive(data) == {"data/x.yaml": b"k: v", "m": b"x"}
    assert list(tmp_path.iterdir()) == []


def test_directory_excludes_python_and_caches(tmp_path: Path) -> None:
    files = read_directory(ROOT / "bundles" / "aktek")
    assert "gen.py" not in files
    assert not any("__pycache__" in n or n.endswith(".py") for n in files)
    assert {"manifest.yaml", "schema.zed", "fixture.yaml"} <= files.keys()


def test_directory_symlink_rejected(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("name: x\n")
    (tmp_path / "evil").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symlink"):
        read_directory(tmp_path)


def test_build_is_deterministic_and_round_trips() -> None:
    files = read_directory(ONTRA)
    a = write_archive(files)
    b = write_archive(dict(reversed(list(files.items()))))
    assert a == b
    assert read_archive(a) == files
    with tarfile.open(fileobj=io.BytesIO(a), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(files)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    bundle = load_bundle_bytes(a)
    assert bundle.digest == load_bundle(ONTRA).digest


def test_revision_override() -> None:
    files = set_revision(read_directory(ONTRA), 7)
    bundle = load_bundle_bytes(write_archive(files))
    assert bundle.manifest.revision == 7
    assert bundle.manifest.name == "ontra"


MANIFESTS = [
    ("not-yaml", b"name: [", "not valid YAML"),
    ("not-mapping", b"- a\n", "mapping"),
    ("bad-name", b"name: Bad Name\nrevision: 1\ngoverns: {types: [user]}\n", "name"),
    ("revision-zero", b"name: x\nrevision: 0\ngoverns: {types: [user]}\n", "revision"),
    ("revision-str", b"name: x\nrevision: '2'\ngoverns: {types: [user]}\n", "revision"),
    ("no-governs", b"name: x\nrevision: 1\n", "governs"),
    ("unknown-type", b"name: x\nrevision: 1\ngoverns: {types: [nosuch]}\n", "nosuch"),
    (
        "future-server",
        b"name: x\nrevision: 1\ngoverns: {types: [user]}\nmin_server_version: '99.0.0'\n",
        "needs server",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "reason"), [(m, r) for _, m, r in MANIFESTS], ids=[n for n, *_ in MANIFESTS]
)
def test_bad_manifest(manifest: bytes, reason: str) -> None:
    files = read_directory(ONTRA)
    files["manifest.yaml"] = manifest
    with pytest.raises(BundleError, match=reason):
        load_bundle_bytes(write_archive(files))


def test_bad_schema_is_invalid_bundle() -> None:
    files = read_directory(ONTRA)
    files["schema.zed"] = b"definition user {\n relation x: nosuch\n}\n"
    with pytest.raises(BundleError, match="invalid schema"):
        load_bundle_bytes(write_archive(files))


def test_missing_schema() -> None:
    files = read_directory(ONTRA)
    del files["schema.zed"]
    with pytest.raises(BundleError, match=r"schema\.zed is missing"):
        load_bundle_bytes(write_archive(files))
