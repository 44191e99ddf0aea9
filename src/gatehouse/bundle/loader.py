"""Read a policy bundle from a directory or a `.tar.gz`, safely, entirely into memory.

Archives are treated as hostile: members are never extracted to disk; only regular files
and directories are accepted (no symlinks, hard links, devices or FIFOs); names must be
relative, without `..`, and unique; the entry count, each member's size and the total
decompressed size are limited, both by the declared header sizes and by counting the bytes
actually decompressed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gatehouse.bundle.errors import BundleError
from gatehouse.bundle.signing import SIGNATURES_FILE, SignatureInfo, Verifier, verify_files
from gatehouse.model import CompiledSchema, SchemaError, compile_schema

MAX_ENTRIES = 1000
MAX_BYTES = 16 * 1024 * 1024
MANIFEST_FILE = "manifest.yaml"
SCHEMA_FILE = "schema.zed"
SERVER_VERSION = "0.1.0"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")


@dataclass(frozen=True, slots=True)
class Limits:
    max_entries: int = MAX_ENTRIES
    max_member_bytes: int = MAX_BYTES
    max_total_bytes: int = MAX_BYTES


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    revision: int
    governs_types: tuple[str, ...]
    min_server_version: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Bundle:
    files: dict[str, bytes]
    manifest: Manifest
    schema: CompiledSchema
    digest: str
    signature: SignatureInfo | None = None

    @property
    def signed(self) -> bool:
        return SIGNATURES_FILE in self.files

    def data_files(self) -> list[str]:
        return sorted(n for n in self.files if n.startswith("data/"))

    def test_files(self) -> list[str]:
        from gatehouse.bundle.assertions import assertion_files

        return assertion_files(self.files)


def excluded(rel: str) -> bool:
    """Files a directory bundle never includes: Python sources and caches, VCS/editor debris."""
    parts = rel.split("/")
    return (
        "__pycache__" in parts
        or rel.endswith((".py", ".pyc", ".pyo"))
        or any(p.startswith(".") and p != SIGNATURES_FILE for p in parts)
        or parts[-1].endswith("~")
    )


def bundle_digest(files: Mapping[str, bytes]) -> str:
    """`sha256:` over the sorted (name, sha256) list of every file but the signatures file."""
    h = hashlib.sha256()
    for name in sorted(files):
        if name == SIGNATURES_FILE:
            continue
        h.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).hexdigest().encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def _check_name(raw: str) -> str | None:
    """Normalised member name, or None for the archive root; BundleError if unsafe."""
    if not raw or "\x00" in raw or "\\" in raw:
        raise BundleError(f"archive member {raw!r}: invalid name")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise BundleError(f"archive member {raw!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BundleError(f"archive member {raw!r}: path traversal ('..')")
    return "/".join(parts) or None


class _CountingReader(io.RawIOBase):
    """Wraps the decompressed stream; raises once more than `limit` bytes come out of it."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self.inner.read(size if size is not None and size >= 0 else 65536)
        self.count += len(chunk)
        if self.count > self.limit:
            raise BundleError(f"archive decompresses to more than {self.limit} bytes")
        return chunk


def read_archive(data: bytes, limits: Limits = Limits()) -> dict[str, bytes]:
    """Every regular file of a gzip'd tar held in `data`, by normalised name."""
    if len(data) > limits.max_total_bytes:
        raise BundleError(f"archive is larger than {limits.max_total_bytes} bytes")
    # Room for one header per entry, padding, pax records and the end-of-archive blocks.
    stream_limit = limits.max_total_bytes + (limits.max_entries + 4) * 3 * 512 + 20 * 512
    reader = _CountingReader(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), stream_limit)
    files: dict[str, bytes] = {}
    seen: set[str] = set()
    total = 0
    entries = 0
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                entries += 1
                if entries > limits.max_entries:
                    raise BundleError(f"archive has more than {limits.max_entries} entries")
                name = _check_name(member.name)
                if member.issym() or member.islnk():
                    raise BundleError(f"archive member {member.name!r}: links are not allowed")
                if member.isdir():
                    if name is not None:
                        if name in seen:
                            raise BundleError(f"archive member {name!r}: duplicate name")
                        seen.add(name)
                    continue
                if not member.isreg():
                    raise BundleError(
                        f"archive member {member.name!r}: only regular files are allowed"
                    )
                if name is None:
                    raise BundleError(f"archive member {member.name!r}: invalid name")
                if name in seen:
                    raise BundleError(f"archive member {name!r}: duplicate name")
                seen.add(name)
                if member.size > limits.max_member_bytes:
                    raise BundleError(
                        f"archive member {name!r} is larger than {limits.max_member_bytes} bytes"
                    )
                if total + member.size > limits.max_total_bytes:
                    raise BundleError(f"archive contents exceed {limits.max_total_bytes} bytes")
                fobj = tar.extractfile(member)
                if fobj is None:
                    raise BundleError(f"archive member {name!r} cannot be read")
                buf = bytearray()
                while True:
                    chunk = fobj.read(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > limits.max_member_bytes or total + len(buf) > (
                        limits.max_total_bytes
                    ):
                        raise BundleError(f"archive member {name!r} exceeds the size limit")
                if len(buf) != member.size:
                    raise BundleError(f"archive member {name!r} is truncated")
                total += len(buf)
                files[name] = bytes(buf)
        for name in files:
            parent = name.rpartition("/")[0]
            while parent:
                if parent in files:
                    raise BundleError(f"archive member {parent!r} is both a file and a directory")
                parent = parent.rpartition("/")[0]
        # Read the rest of the (counted) stream so a truncated or corrupt gzip is caught.
        while reader.read(65536):
            pass
    except BundleError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BundleError(f"not a valid .tar.gz bundle: {e}") from None
    return files


def read_directory(path: Path, limits: Limits = Limits()) -> dict[str, bytes]:
    """The bundle files of a source directory, skipping `excluded` ones; no symlinks."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for entry in sorted(dirnames + filenames):
            rel = entry if rel_dir == "." else f"{rel_dir}/{entry}"
            if excluded(rel):
                if entry in dirnames:
                    dirnames.remove(entry)
                continue
            full = Path(dirpath) / entry
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"{rel}: symlinks are not allowed in a bundle")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{rel}: only regular files are allowed in a bundle")
            if len(files) >= limits.max_entries:
                raise BundleError(f"bundle has more than {limits.max_entries} files")
            if st.st_size > limits.max_member_bytes:
                raise BundleError(f"{rel} is larger than {limits.max_member_bytes} bytes")
            data = full.read_bytes()
            total += len(data)
            if len(data) > limits.max_member_bytes or total > limits.max_total_bytes:
                raise BundleError(f"bundle contents exceed {limits.max_total_bytes} bytes")
            files[rel] = data
    return files


def read_files(path: str | Path, limits: Limits = Limits()) -> dict[str, bytes]:
    p = Path(path)
    if p.is_dir():
        return read_directory(p, limits)
    if not p.is_file():
        raise BundleError(f"{p}: no such bundle directory or archive")
    if p.stat().st_size > limits.max_total_bytes:
        raise BundleError(f"{p}: archive is larger than {limits.max_total_bytes} bytes")
    return read_archive(p.read_bytes(), limits)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def parse_manifest(data: bytes) -> Manifest:
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise BundleError(f"{MANIFEST_FILE}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{MANIFEST_FILE}: must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BundleError(
            f"{MANIFEST_FILE}: `name` must be lower-case letters, digits, '_' or '-' (got {name!r})"
        )
    revision = doc.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise BundleError(f"{MANIFEST_FILE}: `revision` must be an integer >= 1 (got {revision!r})")
    governs = doc.get("governs")
    types = governs.get("types") if isinstance(governs, dict) else None
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
        raise BundleError(f"{MANIFEST_FILE}: `governs.types` must be a non-empty list of types")
    msv = doc.get("min_server_version", "0")
    if not isinstance(msv, str) or not _VERSION_RE.match(msv):
        raise BundleError(
            f"{MANIFEST_FILE}: `min_server_version` must look like 1.2.3 (got {msv!r})"
        )
    return Manifest(name, revision, tuple(types), msv, doc)


def make_bundle(
    files: dict[str, bytes], verifier: Verifier | None = None, source: str = "bundle"
) -> Bundle:
    """Validate `files` as a bundle: signature (if a verifier is given), manifest, schema."""
    signature = verify_files(files, verifier) if verifier is not None else None
    if MANIFEST_FILE not in files:
        raise BundleError(f"{source}: {MANIFEST_FILE} is missing")
    if SCHEMA_FILE not in files:
        raise BundleError(f"{source}: {SCHEMA_FILE} is missing")
    manifest = parse_manifest(files[MANIFEST_FILE])
    if _version(manifest.min_server_version) > _version(SERVER_VERSION):
        raise BundleError(
            f"{MANIFEST_FILE}: bundle needs server >= {manifest.min_server_version}, "
            f"this is {SERVER_VERSION}"
        )
    try:
        text = files[SCHEMA_FILE].decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{SCHEMA_FILE}: not UTF-8") from None
    try:
        schema = compile_schema(text, source=SCHEMA_FILE)
    except SchemaError as e:
        raise BundleError(f"invalid schema: {e}") from None
    missing = [t for t in manifest.governs_types if not schema.has_type(t)]
    if missing:
        raise BundleError(
            f"{MANIFEST_FILE}: governs types not defined in {SCHEMA_FILE}: {', '.join(missing)}"
        )
    return Bundle(dict(files), manifest, schema, bundle_digest(files), signature)


def load_bundle(
    path: str | Path, verifier: Verifier | None = None, limits: Limits = Limits()
) -> Bundle:
    """Load a bundle directory or `.tar.gz`. With a verifier, the signature is mandatory."""
    return make_bundle(read_files(path, limits), verifier, source=str(path))


def load_bundle_bytes(
    data: bytes, verifier: Verifier | None = None, limits: Limits = Limits()
) -> Bundle:
    return make_bundle(read_archive(data, limits), verifier)
