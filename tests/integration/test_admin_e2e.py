"""The scenarios' dynamic rows end to end, on SQLite and PostgreSQL: an admin workflow writes
the SoR, a real sync worker maps it into its feed, a real `gatehouse serve --feed` process
follows it, and Check with at_least_revision = the workflow's revision answers the change.
The admin actions themselves are authorized by that running server (RemoteAuthorizer), and
once through the `gatehouse admin` CLI with --addr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from dbs import Db

from gatehouse.admin import Admin, AdminError, Denied, RemoteAuthorizer, load_config
from gatehouse.admin.reports import preview
from gatehouse.admin.seed import complete
from gatehouse.bundle.loader import load_bundle
from gatehouse.cli.demo import free_port
from gatehouse.server.client import stub, wait_serving
from gatehouse.sor.fixtures import load_fixture
from gatehouse.sync.feed import serve_feed
from gatehouse.sync.worker import SyncWorker
from gatehouse.v1 import decision_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    admin: Admin
    addr: str
    db: Db
    bundle: Path

    def check(self, subject: str, permission: str, resource: str, revision: int) -> bool:
        with grpc.insecure_channel(self.addr) as ch:
            r = stub(ch).Check(
                pb.CheckRequest(
                    subject=subject,
                    permission=permission,
                    resource=resource,
                    at_least_revision=revision,
                ),
                timeout=30,
            )
        assert r.revision >= revision
        return bool(r.allowed)


def _wait_serving(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_serving(addr, proc, 60, poll=0.05)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {log.read_text()}") from None


@contextmanager
def stack(db: Db, name: str, tmp_path: Path) -> Iterator[Stack]:
    bundle_dir = ROOT / "bundles" / name
    sor = db.sor()
    sor.create_schema()
    bundle = load_bundle(bundle_dir)
    cfg = load_config(bundle)
    load_fixture(sor, cfg.mapping, yaml.safe_load(bundle.files["fixture.yaml"])["relationships"])
    complete(sor, cfg)
    worker = SyncWorker(
        sor, cfg.mapping, schema=bundle.schema, poll_interval=0.05, reconcile_interval=0
    )
    worker.start()
    feed = serve_feed(worker, "127.0.0.1:0")
    port = free_port()
    log = tmp_path / f"serve-{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatehouse.cli.main",
                "serve",
                "--bundle",
                str(bundle_dir),
                "--feed",
                f"127.0.0.1:{feed.port}",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEHOUSE_LOG_LEVEL": "WARNING"},
        )
    addr = f"127.0.0.1:{port}"
    remote = RemoteAuthorizer(addr, timeout=30)
    try:
        _wait_serving(addr, proc, log)
        yield Stack(Admin(sor, cfg, remote), addr, db, bundle_dir)
    finally:
        remote.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        feed.stop(0)
        worker.stop()
        sor.close()


def test_ontra_remove_a_member_from_a_group(db: Db, tmp_path: Path) -> None:
    with stack(db, "ontra", tmp_path) as s:
        a = s.admin
        rev0 = a.sor.revision()
        assert s.check("user:finn", "update", "fund:fund_ii", rev0)
        with pytest.raises(Denied, match="manage_groups"):
            a.remove_member("sara", "northwind", "deals", "finn")
        assert a.sor.revision() == rev0
        r = a.remove_member("adam", "northwind", "deals", "finn")
        assert r.revision > rev0
        assert not s.check("user:finn", "update", "fund:fund_ii", r.revision)
        assert s.check("user:finn", "read", "fund:fund_ii", r.revision)
        # Through the CLI, authorized by the server: give it back.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gatehouse.cli.main",
                "admin",
                "group",
                "add",
                "northwind",
                "deals",
                "user:finn",
                *s.db.cli_args(),
                "--bundle",
                str(s.bundle),
                "--as",
                "adam",
                "--addr",
                s.addr,
                "--json",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        rev = json.loads(proc.stdout)["revision"]
        assert s.check("user:finn", "update", "fund:fund_ii", rev)
        # Refused through the CLI: exit 3, message, nothing written.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gatehouse.cli.main",
                "admin",
                "group",
                "remove",
                "northwind",
                "deals",
                "user:finn",
                *s.db.cli_args(),
                "--bundle",
                str(s.bundle),
                "--as",
                "tina",
                "--addr",
                s.addr,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 3
        assert "tina may not groups.edit: needs manage_groups on org:northwind" in proc.stderr
        assert a.sor.revision() == rev


def test_importers_make_a_user_a_guest(db: Db, tmp_path: Path) -> None:
    with stack(db, "importers", tmp_path) as s:
        a = s.admin
        with pytest.raises(Denied, match="change_role"):
            a.assign_role("umar", "datahub", "gina", "user")  # a user may not re-role
        r = a.assign_role("olivia", "datahub", "umar", "guest")
        assert not s.check("user:umar", "edit", "importer:imp_o", r.revision)
        assert s.check("user:umar", "edit", "importer:imp_u", r.revision)
        # And no log-out needed to get it back.
        r = a.assign_role("olivia", "datahub", "umar", "user")
        assert s.check("user:umar", "edit", "importer:imp_o", r.revision)


def test_aktek_freeze_and_unfreeze(db: Db, tmp_path: Path) -> None:
    with stack(db, "aktek", tmp_path) as s:
        a = s.admin
        rev0 = a.sor.revision()
        with pytest.raises(AdminError, match="immune against freezing"):
            a.freeze("sam", "field_a", "hana")
        assert a.sor.revision() == rev0
        r = a.freeze("sam", "field_a", "eve")
        assert not s.check("user:eve", "view", "dashboard:field_a/overview", r.revision)
        r = a.unfreeze("sam", "field_a", "eve")
        assert s.check("user:eve", "view", "dashboard:field_a/overview", r.revision)
        # Preview through the server's Explain.
        cells = {
            c["permission"]: c
            for c in preview(a, "sam", "field_a", "eve", resource="report:field_a/incidents")
        }
        assert cells["edit"]["allowed"] and cells["edit"]["decided_by"] == "role field_a/editor"
        assert not cells["delete"]["allowed"]


def test_kontomatik_invitee_has_no_access_until_registered(db: Db, tmp_path: Path) -> None:
    with stack(db, "kontomatik", tmp_path) as s:
        a = s.admin
        with pytest.raises(Denied):
            a.invite("vic@acme", "acme", "ivy2@acme.example", role="Viewer")
        r = a.invite("ana@acme", "acme", "ivy2@acme.example", role="Viewer")
        assert not s.check("user:ivy2@acme.example", "view_import_data", "account:acme", r.revision)
        r = a.accept(r.data["token"], password="registered!", mfa_enabled=True)
        assert s.check("user:ivy2@acme.example", "view_import_data", "account:acme", r.revision)
        assert s.check(
            "user:ivy2@acme.example", "view_import_data", "environment:acme/COMMERCIAL", r.revision
        )
