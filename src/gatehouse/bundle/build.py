"""Deterministic bundle archives: same files in, same bytes out."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping

import yaml

from gatehouse.bundle.errors import BundleError
from gatehouse.bundle.loader import MANIFEST_FILE

FIXED_MTIME = 0


def set_revision(files: Mapping[str, bytes], revision: int) -> dict[str, bytes]:
    """A copy of `files` whose manifest says `revision`."""
    if revision < 1:
        raise BundleError("revision must be >= 1")
    if MANIFEST_FILE not in files:
        raise BundleError(f"{MANIFEST_FILE} is missing")
    doc = yaml.safe_load(files[MANIFEST_FILE].decode("utf-8"))
    if not isinstance(doc, dict):
        raise BundleError(f"{MANIFEST_FILE}: must be a mapping")
    doc["revision"] = revision
    out = dict(files)
    out[MANIFEST_FILE] = yaml.safe_dump(doc, sort_keys=False).encode("utf-8")
    return out


def write_archive(files: Mapping[str, bytes]) -> bytes:
    """A `.tar.gz` of `files`: sorted names, regular files only, fixed mtime/owner/mode."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=FIXED_MTIME) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
