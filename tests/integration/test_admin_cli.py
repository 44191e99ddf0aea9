"""`gatehouse admin` as a user runs it: init, invite (link printed without a mail server),
accept, bulk import with a progress bar, export files, history, preview; bad input gets a
clear message on stderr, a non-zero exit and writes nothing."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import socketserver
import threading
from pathlib import Path

import pytest
from dbs import Db

from gatehouse.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        import sys

        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            code = main(["admin", *args])
        finally:
            sys.stdin = old
    else:
        code = main(["admin", *args])
    out, err = capsys.readouterr()
    return code, out, err


def revision(db: Db) -> int:
    s = db.sor()
    try:
        return s.revision()
    finally:
        s.close()


@pytest.fixture
def ontra(db: Db, capsys: pytest.CaptureFixture[str]) -> list[str]:
    base = [*db.cli_args(), "--bundle", str(ROOT / "bundles" / "ontra")]
    code, out, err = run(capsys, "init", "--create-schema", "--fixture", *base)
    assert code == 0, err
    assert "loaded the fixture" in out and "completed" in out
    return base


def test_invite_accept_and_history(
    ontra: list[str], db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "user", "invite", "northwind", "nia@northwind.example", "--role", "Admin",
        "--first-name", "Nia", *ontra, "--as", "adam",
    )  # fmt: skip
    assert code == 0, err
    assert "invited nia@northwind.example to northwind as admin (revision" in out
    link = out.split("pass this link on: ", 1)[1].strip()
    token = link.rsplit("/", 1)[1]
    code, out, err = run(
        capsys, "user", "accept", token, "--password-file", "-", *ontra, stdin="long password\n"
    )
    assert code == 0, err
    assert "nia@northwind.example joined northwind" in out
    code, out, err = run(
        capsys, "user", "history", "northwind", "nia@northwind.example", *ontra,
        "--as", "nia@northwind.example", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert [h["action"] for h in json.loads(out)] == ["user.invite", "user.accept"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["user", "invite", "northwind", "bad@", "--as", "adam"], 1, "not a valid e-mail"),
        (["user", "invite", "northwind", "x@y.example", "--as", "sara"], 3, "may not users.invite"),
        (["user", "invite", "northwind", "x@y.example"], 1, "--as USER is required"),
        (["user", "invite", "nowhere", "x@y.example", "--as", "adam"], 3, "may not users.invite"),
        (["user", "delete", "sara", "--as", "adam"], 1, "add --yes"),
        (["user", "freeze", "northwind", "sara", "--as", "adam"], 1, "no freezing"),
        (["role", "create", "northwind", "Auditor", "--as", "adam"], 1, "fixed roles"),
        (["access", "grant", "northwind", "user:sara", "Owner", "fund_i", "--as", "adam"], 1,
         "unknown access level"),
        (["group", "add", "northwind", "deals", "user:nobody", "--as", "adam"], 1,
         "no user 'nobody'"),
        (["user", "export", "northwind", "--out", "x.pdf", "--as", "adam"], 1, "--out x.pdf"),
        (["user", "import", "northwind", "missing.csv", "--as", "adam"], 1, "no such file"),
        (["role", "assign", "northwind", "adam", "Standard", "--as", "adam"], 1,
         "without an owner or admin"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_writes_nothing(
    ontra: list[str],
    db: Db,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    before = revision(db)
    got, out, err = run(capsys, *args, *ontra)
    assert got == code
    assert message in err and err.startswith("gatehouse admin: ")
    assert out == ""
    assert revision(db) == before


def test_missing_db_or_bundle_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "role", "templates", "--db", "sqlite:///:memory:")
    assert code == 1 and "--bundle is required" in err
    code, _out, err = run(
        capsys, "role", "templates", "--db", "sqlite:///:memory:", "--bundle", "/nonexistent"
    )
    assert code == 1 and "nonexistent" in err


def test_bulk_import_template_progress_and_exports(
    ontra: list[str], db: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openpyxl import load_workbook

    tpl = tmp_path / "t.xlsx"
    code, out, err = run(capsys, "user", "template", str(tpl), *ontra)
    assert code == 0, err
    wb = load_workbook(tpl)
    ws = wb["users"]
    ws.append(["Ola", "", "ola@northwind.example", "", "", "", "Standard"])
    ws.append(["", "", "nobody@northwind.example", "", "", "", ""])
    ws.append(["Ola", "", "ola@northwind.example", "", "", "", ""])
    wb.save(tpl)
    before = revision(db)
    code, out, err = run(capsys, "user", "import", "northwind", str(tpl), "--dry-run", *ontra,
                         "--as", "adam")  # fmt: skip
    assert code == 2
    assert "would invite 1 of 3 users; 2 rejected" in out
    assert "line 3: nobody@northwind.example: rejected: first name is missing" in err
    assert "line 4: ola@northwind.example: rejected: duplicate of the e-mail on line 2" in err
    assert revision(db) == before
    links = tmp_path / "links.csv"
    code, out, err = run(capsys, "user", "import", "northwind", str(tpl), "--links", str(links),
                         *ontra, "--as", "adam")  # fmt: skip
    assert code == 2
    assert "importing [#########################] 100%" in err
    assert revision(db) == before + 1
    rows = list(csv.reader(links.open()))
    assert rows[0] == ["email", "link"] and rows[1][0] == "ola@northwind.example"
    code, out, err = run(capsys, "user", "import", "northwind", str(tpl), "--limit", "2",
                         *ontra, "--as", "adam")  # fmt: skip
    assert code == 1 and "3 rows exceed the limit of 2" in err
    # Exports.
    code, out, err = run(capsys, "user", "export", "northwind", *ontra, "--as", "adam")
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["user", "email", "groups", "role", "access level", "fund access", "status"]
    assert [
        "ola@northwind.example",
        "ola@northwind.example",
        "",
        "",
        "none",
        "",
        "invited",
    ] in table
    xlsx = tmp_path / "profile.xlsx"
    code, out, err = run(capsys, "user", "export", "northwind", "--view", "profile", "--out",
                         str(xlsx), *ontra, "--as", "adam")  # fmt: skip
    assert code == 0, err
    head = next(load_workbook(xlsx).active.iter_rows(values_only=True))
    assert list(head) == [
        "joining date", "email", "language", "name", "user type", "last login", "phone",
    ]  # fmt: skip


def test_preview_and_roles_output(db: Db, capsys: pytest.CaptureFixture[str]) -> None:
    base = [*db.cli_args(), "--bundle", str(ROOT / "bundles" / "aktek")]
    assert run(capsys, "init", "--create-schema", "--fixture", *base)[0] == 0
    code, out, err = run(capsys, "preview", "field_a", "eve", "--resource",
                         "report:field_a/incidents", *base, "--as", "sam")  # fmt: skip
    assert code == 0, err
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert "allow" in lines["view"] and "role field_a/analyst" in lines["view"]
    assert "deny" in lines["delete"] and "no role or rule allows it" in lines["delete"]
    code, out, err = run(capsys, "role", "list", "field_a", *base, "--as", "sam", "--json")
    assert code == 0, err
    roles = {r["id"]: r for r in json.loads(out)}
    assert roles["field_a/hr"]["freeze_immune"] and roles["field_a/superadmin"]["super_admin"]
    assert "field:field_a/incidents/location#edit" in roles["field_a/editor"]["cells"]
    cell = "field:field_a/incidents/casualties#view"
    code, out, err = run(capsys, "role", "edit", "field_a/editor", "--add", cell, *base,
                         "--as", "sam")  # fmt: skip
    assert code == 0, err
    assert "updated role field_a/editor" in out
    code, out, err = run(capsys, "user", "freeze", "field_a", "hana", *base, "--as", "sam")
    assert code == 1 and "immune against freezing" in err


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib.send_message; keeps each message's DATA."""

    inbox: list[str] = []

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            cmd = line.decode().strip().upper()
            if cmd.startswith(("EHLO", "HELO")):
                self.wfile.write(b"250 test\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go on\r\n")
                data = []
                while (part := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(part.decode())
                self.inbox.append("".join(data))
                self.wfile.write(b"250 queued\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_invitation_is_mailed_when_a_mail_server_is_configured(
    ontra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _Smtp.inbox = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        smtp = f"127.0.0.1:{server.server_address[1]}"
        code, out, err = run(capsys, "user", "invite", "northwind", "mo@northwind.example",
                             "--smtp", smtp, *ontra, "--as", "adam")  # fmt: skip
        assert code == 0, err
        assert "sent to mo@northwind.example" in out and "pass this link on" not in out
    finally:
        server.shutdown()
        server.server_close()
    (raw,) = _Smtp.inbox
    mail = email.message_from_string(raw, policy=email.policy.default)
    assert mail["To"] == "mo@northwind.example"
    body = mail.get_content()  # type: ignore[attr-defined]
    token = body.split("https://app.ontra.example/invitation/", 1)[1].split()[0]
    code, out, err = run(capsys, "user", "accept", token, "--password-file", "-", *ontra,
                         stdin="long password\n")  # fmt: skip
    assert code == 0, err


def test_unreachable_decision_server_refuses(
    ontra: list[str], db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    from gatehouse.cli.demo import free_port

    before = revision(db)
    addr = f"127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "user", "invite", "northwind", "x@northwind.example", *ontra,
                         "--as", "adam", "--addr", addr, "--timeout", "0.5")  # fmt: skip
    assert code == 3 and out == ""
    assert "no authorization decision" in err and "UNAVAILABLE" in err
    assert revision(db) == before
