"""`gatehouse bundle build|sign|verify|inspect|test`: policy bundle tooling.

`bundle serve` publishes an archive over HTTP for `gatehouse.bundle.http.BundlePoller`.

Exit codes: 0 success, 2 usage error, 3 invalid bundle (unreadable, hostile, bad manifest,
bad schema, signature verification failed), 4 the bundle's own assertions fail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from gatehouse.bundle import (
    SIGNATURES_FILE,
    AssertionResult,
    Bundle,
    BundleError,
    Verifier,
    load_private_key,
    load_public_key,
    make_bundle,
    read_files,
    run_assertions,
    set_revision,
    sign_files,
    write_archive,
)
from gatehouse.bundle.signing import read_signature_unverified

EXIT_OK = 0
EXIT_INVALID = 3
EXIT_FAILING = 4
DEFAULT_KEY_ID = "gatehouse"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bundle", help="build, sign, verify, inspect and test policy bundles"
    )
    sub = p.add_subparsers(dest="bundle_verb", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="directory -> deterministic .tar.gz")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("-o", "--output", required=True, help="archive to write")
    b.add_argument("--revision", type=int, help="override the manifest revision")
    b.set_defaults(handler=run_build)

    s = sub.add_parser("sign", help="write .signatures.json into a directory or archive")
    s.add_argument("bundle", metavar="DIR|FILE")
    s.add_argument("--key", required=True, help="PEM private key (Ed25519 or RSA)")
    s.add_argument("--key-id", default=DEFAULT_KEY_ID, help="key id (JWT kid)")
    s.add_argument("--scope", help="optional scope claim")
    s.add_argument("-o", "--output", help="for an archive: where to write (default: in place)")
    s.set_defaults(handler=run_sign)

    v = sub.add_parser("verify", help="check a bundle's signature and validity")
    v.add_argument("bundle", metavar="DIR|FILE")
    _add_verify_args(v, required=True)
    v.set_defaults(handler=run_verify)

    i = sub.add_parser("inspect", help="show manifest, files, digest and signature status")
    i.add_argument("bundle", metavar="DIR|FILE")
    _add_verify_args(i, required=False)
    i.add_argument("--format", choices=["text", "json"], default="text")
    i.set_defaults(handler=run_inspect)

    t = sub.add_parser("test", help="compile the bundle and run its assertions")
    t.add_argument("bundle", metavar="DIR|FILE")
    _add_verify_args(t, required=False)
    t.add_argument("--format", choices=["tree", "json", "junit"], default="tree")
    t.set_defaults(handler=run_test)

    sv = sub.add_parser("serve", help="serve a bundle archive over HTTP (GET /bundle.tar.gz)")
    sv.add_argument("bundle", metavar="DIR|FILE", help="a directory is built on every request")
    sv.add_argument("--listen", default="127.0.0.1:8181", help="HOST:PORT (default %(default)s)")
    sv.set_defaults(handler=run_serve)


def _add_verify_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--pubkey", required=required, help="PEM public key; makes a signature mandatory"
    )
    p.add_argument("--key-id", default=DEFAULT_KEY_ID, help="key id the public key is trusted as")
    p.add_argument("--scope", help="required scope claim")


def _err(msg: str) -> None:
    print(f"gatehouse bundle: {msg}", file=sys.stderr)


def _verifier(args: argparse.Namespace) -> Verifier | None:
    if not getattr(args, "pubkey", None):
        return None
    key = load_public_key(Path(args.pubkey).read_bytes())
    return Verifier({args.key_id: key}, scope=args.scope)


def _load(args: argparse.Namespace) -> Bundle:
    return make_bundle(read_files(args.bundle), _verifier(args), source=str(args.bundle))


def run_build(args: argparse.Namespace) -> int:
    try:
        files = read_files(args.dir)
        if args.revision is not None:
            files = set_revision(files, args.revision)
            if files.pop(SIGNATURES_FILE, None) is not None:
                _err(f"warning: dropped {SIGNATURES_FILE}: --revision changes manifest.yaml")
        bundle = make_bundle(files, source=str(args.dir))
        data = write_archive(bundle.files)
        Path(args.output).write_bytes(data)
    except (BundleError, OSError) as e:
        _err(str(e))
        return EXIT_INVALID
    if SIGNATURES_FILE in bundle.files:
        _err(f"note: {SIGNATURES_FILE} copied from {args.dir}")
    print(
        f"built {args.output}: {bundle.manifest.name} revision {bundle.manifest.revision} "
        f"{bundle.digest} ({len(bundle.files)} files)"
    )
    return EXIT_OK


def run_sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(Path(args.key).read_bytes())
        path = Path(args.bundle)
        files = read_files(path)
        files.pop(SIGNATURES_FILE, None)
        bundle = make_bundle(files, source=str(path))
        sig = sign_files(bundle.files, key, args.key_id, scope=args.scope)
        if path.is_dir():
            if args.output:
                _err("--output is only for archives; a directory is signed in place")
                return 2
            target = path / SIGNATURES_FILE
            target.write_bytes(sig)
        else:
            target = Path(args.output) if args.output else path
            target.write_bytes(write_archive({**bundle.files, SIGNATURES_FILE: sig}))
    except (BundleError, OSError) as e:
        _err(str(e))
        return EXIT_INVALID
    print(f"signed {target} with key {args.key_id}: {bundle.digest}")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    try:
        bundle = _load(args)
    except (BundleError, OSError) as e:
        _err(f"verification failed: {e}")
        return EXIT_INVALID
    assert bundle.signature is not None
    print(
        f"OK {bundle.manifest.name} revision {bundle.manifest.revision} {bundle.digest} "
        f"signed by {bundle.signature.key_id} ({bundle.signature.algorithm})"
    )
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    try:
        bundle = _load(args)
    except (BundleError, OSError) as e:
        _err(str(e))
        return EXIT_INVALID
    if bundle.signature is not None:
        status = f"verified (key {bundle.signature.key_id}, {bundle.signature.algorithm})"
    elif bundle.signed:
        status = "present, not verified (no --pubkey)"
    else:
        status = "unsigned"
    info: dict[str, Any] = {
        "name": bundle.manifest.name,
        "revision": bundle.manifest.revision,
        "governs": list(bundle.manifest.governs_types),
        "min_server_version": bundle.manifest.min_server_version,
        "digest": bundle.digest,
        "signature": status,
        "files": [{"name": n, "size": len(bundle.files[n])} for n in sorted(bundle.files)],
    }
    if bundle.signed:
        info["signature_claims"] = read_signature_unverified(bundle.files)
    if args.format == "json":
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    print(f"name:      {info['name']}")
    print(f"revision:  {info['revision']}")
    print(f"governs:   {', '.join(info['governs'])}")
    print(f"min server: {info['min_server_version']}")
    print(f"digest:    {info['digest']}")
    print(f"signature: {status}")
    print("files:")
    for f in info["files"]:
        print(f"  {f['size']:>8}  {f['name']}")
    return EXIT_OK


def run_test(args: argparse.Namespace) -> int:
    try:
        bundle = _load(args)
        results = run_assertions(bundle.schema, bundle.files)
    except (BundleError, OSError) as e:
        _err(f"invalid bundle: {e}")
        return EXIT_INVALID
    failed = [r for r in results if not r.passed]
    if args.format == "json":
        print(
            json.dumps(
                {
                    "bundle": bundle.manifest.name,
                    "revision": bundle.manifest.revision,
                    "digest": bundle.digest,
                    "passed": len(results) - len(failed),
                    "failed": len(failed),
                    "results": [r.to_json() for r in results],
                },
                indent=2,
            )
        )
    elif args.format == "junit":
        print(_junit(bundle, results))
    else:
        _tree(bundle, results)
    return EXIT_FAILING if failed else EXIT_OK


def _tree(bundle: Bundle, results: list[AssertionResult]) -> None:
    print(f"{bundle.manifest.name} revision {bundle.manifest.revision} {bundle.digest}")
    by_file: dict[str, list[AssertionResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    for file, rows in by_file.items():
        bad = [r for r in rows if not r.passed]
        print(f"  {file}: {len(rows) - len(bad)}/{len(rows)} passed")
        for r in bad:
            print(f"    FAIL {r.id}: {r.message}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")


def _junit(bundle: Bundle, results: list[AssertionResult]) -> str:
    failed = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", tests=str(len(results)), failures=str(failed))
    by_file: dict[str, list[AssertionResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    for file, rows in by_file.items():
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"{bundle.manifest.name}/{file}",
            tests=str(len(rows)),
            failures=str(sum(not r.passed for r in rows)),
        )
        for r in rows:
            case = ET.SubElement(
                suite, "testcase", classname=f"{bundle.manifest.name}.{file}", name=r.id
            )
            if not r.passed:
                ET.SubElement(case, "failure", message=r.message).text = r.message
    return ET.tostring(suites, encoding="unicode")


def run_serve(args: argparse.Namespace) -> int:
    from gatehouse.bundle.http import BUNDLE_PATH, make_server

    path = Path(args.bundle)

    def source() -> bytes:
        if path.is_dir():
            return write_archive(read_files(path))
        return path.read_bytes()

    try:
        make_bundle(read_files(path), source=str(path))
        host, _, port = args.listen.rpartition(":")
        server = make_server(source, host or "127.0.0.1", int(port))
    except (BundleError, OSError, ValueError) as e:
        _err(str(e))
        return EXIT_INVALID
    addr, bound = server.server_address[:2]
    print(f"gatehouse bundle: serving http://{addr!s}:{bound}{BUNDLE_PATH}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK
