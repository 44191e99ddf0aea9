"""Bulk creation of users from CSV or from the XLSX template.

First name and e-mail are mandatory; every other column has a default. Each row with bad
data, a duplicate e-mail in the file, or the e-mail of an existing user is rejected with its
reason; the valid rows are invited in ONE transaction (each gets a single-use invitation
carrying the row's role, and no access until accepted). At most `limit` rows per import (a
licence limit, default 5,000): a larger file is refused as a whole.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse.admin.config import AdminError
from gatehouse.admin.service import Admin, check_profile, norm_email

DEFAULT_LIMIT = 5000
COLUMNS = ["first_name", "last_name", "email", "language", "phone", "user_type", "role"]
MANDATORY = ("first_name", "email")
_ALIASES = {
    "first name": "first_name",
    "firstname": "first_name",
    "last name": "last_name",
    "lastname": "last_name",
    "e-mail": "email",
    "e-mail address": "email",
    "email address": "email",
    "mail": "email",
    "user type": "user_type",
    "type": "user_type",
}


def _openpyxl(sub: str = "") -> Any:
    """openpyxl ships no type information: use it untyped."""
    return importlib.import_module("openpyxl" + (f".{sub}" if sub else ""))


@dataclass
class Rejected:
    line: int
    email: str
    reason: str


@dataclass
class BulkReport:
    total: int
    created: list[dict[str, str]] = field(default_factory=list)  # user, email, role, link
    rejected: list[Rejected] = field(default_factory=list)
    dry_run: bool = False
    revision: int = 0


def _norm_header(h: Any) -> str:
    k = str(h or "").strip().lower().rstrip("*").strip()
    return _ALIASES.get(k, k.replace(" ", "_"))


def _rows_from(header: list[Any], body: list[list[Any]], source: str) -> list[dict[str, str]]:
    cols = [_norm_header(h) for h in header]
    missing = [c for c in MANDATORY if c not in cols]
    if missing:
        raise AdminError(f"{source}: missing column(s) {', '.join(missing)} in the header")
    unknown = [c for c in cols if c and c not in COLUMNS]
    if unknown:
        raise AdminError(
            f"{source}: unknown column(s) {', '.join(unknown)}; use {', '.join(COLUMNS)}"
        )
    out = []
    for raw in body:
        row = {
            c: ("" if v is None else str(v).strip()) for c, v in zip(cols, raw, strict=False) if c
        }
        out.append(row)
    return out


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV or XLSX file (the first sheet), keyed by normalised column name.
    Fully blank rows are kept as rows (they are rejected with a reason, not skipped)
    except trailing ones."""
    p = Path(path)
    if not p.is_file():
        raise AdminError(f"{path}: no such file")
    if p.suffix.lower() in (".xlsx", ".xlsm"):
        load_workbook = _openpyxl().load_workbook

        try:
            wb = load_workbook(p, read_only=True, data_only=True)
        except Exception as e:
            raise AdminError(f"{path}: not a readable XLSX file ({e})") from None
        ws = wb.worksheets[0]
        values = [list(r) for r in ws.iter_rows(values_only=True)]
        wb.close()
    elif p.suffix.lower() in (".csv", ".txt"):
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise AdminError(f"{path}: not UTF-8 text") from None
        delim = ","
        with contextlib.suppress(csv.Error):
            delim = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        values = [list(r) for r in csv.reader(io.StringIO(text), delimiter=delim)]
    else:
        raise AdminError(f"{path}: expected a .csv or .xlsx file")
    while values and all(v in (None, "") for v in values[-1]):
        values.pop()
    if not values:
        raise AdminError(f"{path}: the file is empty")
    return _rows_from(values[0], values[1:], str(path))


def write_template(path: str | Path, admin: Admin) -> None:
    """The XLSX template: the columns (mandatory ones marked *) and a sheet of help."""
    Workbook = _openpyxl().Workbook
    Font = _openpyxl("styles").Font

    cfg = admin.config
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "users"
    ws.append([c + ("*" if c in MANDATORY else "") for c in COLUMNS])
    for c in ws[1]:
        c.font = Font(bold=True)
        ws.column_dimensions[c.column_letter].width = 22
    ws.freeze_panes = "A2"
    help_ws = wb.create_sheet("help")
    roles = ", ".join(cfg.roles.templates) if cfg.roles.model == "fixed" else "a role of the tenant"
    for line in [
        ["column", "mandatory", "default / allowed values"],
        ["first_name", "yes", ""],
        ["last_name", "no", "empty"],
        ["email", "yes", "unique; an existing user's e-mail is rejected"],
        ["language", "no", "en (a code such as en, fr, pt-BR)"],
        ["phone", "no", "empty"],
        ["user_type", "no", f"{cfg.user_types[0]} ({', '.join(cfg.user_types)})"],
        ["role", "no", f"{cfg.roles.default or 'no role'} ({roles})"],
        ["", "", f"at most {DEFAULT_LIMIT} rows per import (configurable licence limit)"],
    ]:
        help_ws.append(line)
    wb.save(str(path))


def import_users(
    admin: Admin,
    actor: str,
    tenant: str,
    rows: list[dict[str, str]],
    *,
    dry_run: bool = False,
    limit: int = DEFAULT_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> BulkReport:
    if len(rows) > limit:
        raise AdminError(f"{len(rows)} rows exceed the limit of {limit} users per import")
    report = BulkReport(total=len(rows), dry_run=dry_run)
    step = progress or (lambda _i, _n: None)
    try:
        return _import(admin, actor, tenant, rows, report, dry_run, step)
    except _DryRun:
        return report


def _import(
    admin: Admin,
    actor: str,
    tenant: str,
    rows: list[dict[str, str]],
    report: BulkReport,
    dry_run: bool,
    step: Callable[[int, int], None],
) -> BulkReport:
    cfg = admin.config
    with admin._tx() as tx:
        admin._authorize(tx, actor, "users.invite", tenant)
        admin._tenant(tx, tenant)
        existing = {u["email"] for u in tx.select("users")} | {u["id"] for u in tx.select("users")}
        seen: dict[str, int] = {}
        role_cache: dict[str, str | None] = {}
        valid: list[tuple[int, str, str | None, dict[str, str]]] = []
        for i, row in enumerate(rows):
            line = i + 2  # 1-based, after the header
            email_raw = row.get("email", "")
            try:
                if not any(row.values()):
                    raise AdminError("empty row")
                if not row.get("first_name"):
                    raise AdminError("first name is missing")
                email = norm_email(email_raw)
                if email in seen:
                    raise AdminError(f"duplicate of the e-mail on line {seen[email]}")
                seen[email] = line
                if email in existing:
                    raise AdminError("a user with this e-mail already exists")
                prof = {
                    k: row[k]
                    for k in ("first_name", "last_name", "language", "phone", "user_type")
                    if row.get(k)
                }
                prof = check_profile(cfg, prof)
                prof.setdefault("user_type", cfg.user_types[0])
                rname = row.get("role", "")
                if rname not in role_cache:
                    role_cache[rname] = admin._pick_role(tx, tenant, rname or None)
                valid.append((line, email, role_cache[rname], prof))
            except AdminError as e:
                report.rejected.append(Rejected(line, email_raw, str(e)))
            step(i + 1, len(rows) * (1 if dry_run else 2))
        if dry_run:
            for line, email, role, _p in valid:
                report.created.append({"line": str(line), "email": email, "role": role or ""})
            raise _DryRun()
        for j, (line, email, role, prof) in enumerate(valid):
            uid, token = admin._invite_in_tx(tx, actor, tenant, email, role, prof, None)
            report.created.append(
                {
                    "line": str(line),
                    "user": uid,
                    "email": email,
                    "role": role or "",
                    "link": admin._link(token),
                }
            )
            step(len(rows) + int((j + 1) * len(rows) / max(len(valid), 1)), len(rows) * 2)
        tx.audit(
            actor,
            "user.bulk_import",
            "tenant",
            tenant,
            None,
            {"created": len(valid), "rejected": len(report.rejected), "rows": len(rows)},
        )
    report.revision = tx.revision
    return report


class _DryRun(Exception):
    """Raised inside the transaction of a dry run so that nothing is written."""
