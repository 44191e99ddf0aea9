"""`gatehouse admin`: the seed products' admin workflows over the system of record.

Every command acts as `--as USER` and is authorized by a gatehouse decision against the
bundle (`--bundle DIR`): computed locally from the SoR, or asked of a running decision
server with `--addr` (at_least_revision = the SoR's revision). Writes print the revision
they produced. Bad input or a refusal: a message on stderr, nothing written, exit status 1
(3 when the decision refused the action; 2 when a bulk import rejected some rows).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import smtplib
import sys
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from gatehouse.admin.authz import Authorizer, LocalAuthorizer, RemoteAuthorizer
from gatehouse.admin.bulk import DEFAULT_LIMIT, import_users, read_rows, write_template
from gatehouse.admin.config import AdminError, load_config
from gatehouse.admin.reports import export_users, history, preview
from gatehouse.admin.seed import complete
from gatehouse.admin.service import Admin, Denied, Result
from gatehouse.bundle.loader import load_bundle
from gatehouse.sor.store import SystemOfRecord

Handler = Callable[[Admin, argparse.Namespace], int]


def _common() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    g = c.add_argument_group("connection")
    g.add_argument("--db", default=os.environ.get("GATEHOUSE_DB"), help="SoR URL ($GATEHOUSE_DB)")
    g.add_argument("--db-schema", default=None, help="PostgreSQL schema holding the tables")
    g.add_argument(
        "--bundle",
        default=os.environ.get("GATEHOUSE_BUNDLE"),
        help="bundle directory or .tar.gz with admin.yaml and mapping.yaml ($GATEHOUSE_BUNDLE)",
    )
    g.add_argument(
        "--as",
        dest="actor",
        default=os.environ.get("GATEHOUSE_ADMIN_AS"),
        help="the acting user's id ($GATEHOUSE_ADMIN_AS)",
    )
    g.add_argument(
        "--addr",
        default=None,
        help="authorize with this decision server (HOST:PORT) instead of locally",
    )
    g.add_argument("--timeout", type=float, default=10.0, help="decision deadline in seconds")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--smtp", default=os.environ.get("GATEHOUSE_SMTP"), help="HOST:PORT mailer")
    g.add_argument("--mail-from", default="gatehouse@localhost", help="sender of e-mails")
    return c


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "admin",
        help="admin workflows (users, roles, groups, access, tenants), authorized by gatehouse",
    )
    common = _common()
    areas = p.add_subparsers(dest="admin_area", metavar="AREA", required=True)

    def cmd(sub: Any, name: str, fn: Handler, help: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help)
        q.set_defaults(handler=run, admin_fn=fn)
        return q

    q = cmd(areas, "init", _init, "complete the SoR's implied rows (optionally load the fixture)")
    q.add_argument("--fixture", action="store_true", help="load the bundle's fixture.yaml first")
    q.add_argument("--create-schema", action="store_true", help="create missing tables first")

    u = areas.add_parser("user", help="users").add_subparsers(dest="cmd", required=True)
    q = cmd(u, "invite", _invite, "invite an e-mail to a tenant (link valid 7 days)")
    q.add_argument("tenant")
    q.add_argument("email")
    q.add_argument("--role", default=None)
    _profile_args(q)
    q = cmd(u, "accept", _accept, "accept an invitation (register)")
    q.add_argument("token")
    q.add_argument("--first-name", default=None)
    q.add_argument("--last-name", default=None)
    q.add_argument("--mfa", action="store_true", help="two-factor authentication is set up")
    _password_args(q)
    q = cmd(u, "register", _register, "self-service sign-up (auto-join by e-mail domain)")
    q.add_argument("email")
    q.add_argument("--first-name", required=True)
    q.add_argument("--last-name", default="")
    _password_args(q)
    q = cmd(u, "add", _add, "add an existing user to another tenant")
    q.add_argument("tenant")
    q.add_argument("user")
    q.add_argument("--role", default=None)
    q.add_argument("--user-type", default=None)
    q = cmd(u, "remove", _remove, "take a member out of one tenant")
    q.add_argument("tenant")
    q.add_argument("user")
    q = cmd(u, "edit", _edit, "edit a profile")
    q.add_argument("tenant")
    q.add_argument("user")
    _profile_args(q)
    for name, fn in (("freeze", _freeze), ("unfreeze", _unfreeze)):
        q = cmd(u, name, fn, f"{name} a member of a tenant")
        q.add_argument("tenant")
        q.add_argument("user")
    q = cmd(u, "delete", _delete, "delete a user for good (irreversible)")
    q.add_argument("user")
    q.add_argument("--yes", action="store_true", help="confirm: deleting cannot be undone")
    q = cmd(u, "resend", _resend, "resend the activation (a new invitation link)")
    q.add_argument("tenant")
    q.add_argument("email")
    q = cmd(u, "reset-password", _reset, "a single-use password-reset link")
    q.add_argument("tenant")
    q.add_argument("user")
    q = cmd(u, "reset-2fa", _reset_2fa, "invalidate a user's second factor")
    q.add_argument("tenant")
    q.add_argument("user")
    q = cmd(u, "set-password", _set_password, "use a password-reset token")
    q.add_argument("token")
    _password_args(q)
    q = cmd(u, "history", _history, "the audit log of one user")
    q.add_argument("tenant")
    q.add_argument("user")
    q = cmd(u, "export", _export, "export the tenant's users (CSV or XLSX)")
    q.add_argument("tenant")
    q.add_argument("--view", choices=["audit", "profile"], default="audit")
    q.add_argument("--out", default="-", help="FILE.csv, FILE.xlsx or - (CSV on stdout)")
    q = cmd(u, "import", _import, "bulk-create users from CSV or XLSX")
    q.add_argument("tenant")
    q.add_argument("file")
    q.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    q.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="max rows (%(default)s)")
    q.add_argument("--links", default=None, help="write the invitation links to this CSV")
    q.add_argument("--no-progress", action="store_true")
    q = cmd(u, "template", _template, "write the XLSX import template")
    q.add_argument("file")

    s = areas.add_parser("subscriber", help="subscribers (e-mail only, no access)")
    ss = s.add_subparsers(dest="cmd", required=True)
    for name, fn in (("add", _sub_add), ("remove", _sub_remove)):
        q = cmd(ss, name, fn, f"{name} a subscriber")
        q.add_argument("tenant")
        q.add_argument("email")

    r = areas.add_parser("role", help="roles").add_subparsers(dest="cmd", required=True)
    cmd(r, "templates", _templates, "the bundle's role templates")
    q = cmd(r, "list", _roles, "the roles of a tenant")
    q.add_argument("tenant")
    q = cmd(r, "create", _role_create, "create a custom role")
    q.add_argument("tenant")
    q.add_argument("name")
    q.add_argument("--template", default=None)
    q.add_argument("--cell", action="append", default=[], help="CELL or TYPE:ID#CELL")
    q.add_argument("--super-admin", action="store_true")
    q.add_argument("--freeze-immune", action="store_true")
    q = cmd(r, "edit", _role_edit, "edit a role's cells, name or flags")
    q.add_argument("role")
    q.add_argument("--add", action="append", default=[], help="CELL or TYPE:ID#CELL")
    q.add_argument("--remove", action="append", default=[], help="CELL or TYPE:ID#CELL")
    q.add_argument("--name", default=None)
    q.add_argument("--super-admin", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--freeze-immune", action=argparse.BooleanOptionalAction, default=None)
    q = cmd(r, "delete", _role_delete, "delete a custom role")
    q.add_argument("role")
    for name, fn in (("assign", _assign), ("unassign", _unassign)):
        q = cmd(r, name, fn, f"{name} a role to a member of a tenant")
        q.add_argument("tenant")
        q.add_argument("user")
        q.add_argument("role")

    g = areas.add_parser("group", help="groups and teams").add_subparsers(dest="cmd", required=True)
    q = cmd(g, "create", _group_create, "create a group")
    q.add_argument("tenant")
    q.add_argument("name")
    q = cmd(g, "rename", _group_rename, "rename a group")
    q.add_argument("tenant")
    q.add_argument("group")
    q.add_argument("name")
    q = cmd(g, "delete", _group_delete, "delete a group")
    q.add_argument("tenant")
    q.add_argument("group")
    for name, fn in (("add", _group_add), ("remove", _group_remove)):
        q = cmd(g, name, fn, f"{name} a member (user:ID or group:ID for nesting)")
        q.add_argument("tenant")
        q.add_argument("group")
        q.add_argument("member")

    a = areas.add_parser("access", help="access levels").add_subparsers(dest="cmd", required=True)
    q = cmd(a, "grant", _grant, "grant a level (View/Edit) on one resource or all (*)")
    q.add_argument("tenant")
    q.add_argument("subject", help="user:ID or group:ID")
    q.add_argument("level")
    q.add_argument("resource", help="ID, TYPE:ID or * for all")
    q = cmd(a, "revoke", _revoke, "revoke a subject's level on one resource or all (*)")
    q.add_argument("tenant")
    q.add_argument("subject")
    q.add_argument("resource")

    for area, kind, who in (("dataset", "datasets", "team"), ("task", "tasks", "user")):
        d = areas.add_parser(area, help=f"{kind} assignments").add_subparsers(
            dest="cmd", required=True
        )
        for name, on in (("assign", True), ("unassign", False)):
            q = cmd(d, name, _assign_fn(kind, on), f"{name} a {area} to a {who}")
            q.add_argument("tenant")
            q.add_argument(area)
            q.add_argument(who)

    t = areas.add_parser("tenant", help="tenants").add_subparsers(dest="cmd", required=True)
    q = cmd(t, "create", _tenant_create, "create a tenant (or a child company)")
    q.add_argument("tenant")
    q.add_argument("--name", default="")
    q.add_argument("--parent", default=None)
    q = cmd(t, "auto-join", _auto_join, "auto-join users of an e-mail domain ('' = off)")
    q.add_argument("tenant")
    q.add_argument("domain")
    q = cmd(t, "agency-manager", _agency, "make a member an agency manager")
    q.add_argument("tenant")
    q.add_argument("user")
    q.add_argument("--remove", action="store_true")

    q = cmd(areas, "preview", _preview, "a user's effective permissions, and what decided each")
    q.add_argument("tenant")
    q.add_argument("user")
    q.add_argument("--resource", default=None, help="only this resource (TYPE:ID)")


def _profile_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--first-name", default=None)
    q.add_argument("--last-name", default=None)
    q.add_argument("--language", default=None)
    q.add_argument("--phone", default=None)
    q.add_argument("--user-type", default=None)


def _profile(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("first_name", "last_name", "language", "phone", "user_type")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _password_args(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--password-file",
        default=None,
        help="read the password from this file ('-' = stdin); else $GATEHOUSE_PASSWORD or a prompt",
    )


def _password(args: argparse.Namespace) -> str:
    if args.password_file == "-":
        return sys.stdin.readline().rstrip("\n")
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    env = os.environ.get("GATEHOUSE_PASSWORD")
    if env:
        return env
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    raise AdminError("no password: use --password-file or $GATEHOUSE_PASSWORD")


# --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    fn: Handler = args.admin_fn
    authz: Authorizer | None = None
    sor: SystemOfRecord | None = None
    try:
        if not args.db:
            raise AdminError("--db is required (or $GATEHOUSE_DB)")
        if not args.bundle:
            raise AdminError("--bundle is required (or $GATEHOUSE_BUNDLE)")
        bundle = load_bundle(args.bundle)
        config = load_config(bundle)
        sor = SystemOfRecord(args.db, db_schema=args.db_schema)
        if args.addr:
            authz = RemoteAuthorizer(args.addr, args.timeout)
        else:
            authz = LocalAuthorizer(sor, bundle, config.mapping)
        admin = Admin(sor, config, authz)
        return fn(admin, args)
    except Denied as e:
        print(f"gatehouse admin: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # bad input, a refused change, an unreachable database ...
        print(f"gatehouse admin: {e}", file=sys.stderr)
        return 1
    finally:
        if isinstance(authz, RemoteAuthorizer):
            authz.close()
        if sor is not None:
            sor.close()


def _actor(args: argparse.Namespace) -> str:
    if not args.actor:
        raise AdminError("--as USER is required (or $GATEHOUSE_ADMIN_AS)")
    return str(args.actor)


def _done(args: argparse.Namespace, r: Result) -> int:
    if args.json:
        data = {k: v for k, v in r.data.items() if k != "token"}
        print(json.dumps({"revision": r.revision, "message": r.message, **data}))
    else:
        print(f"{r.message} (revision {r.revision})")
    return 0


def _deliver(admin: Admin, args: argparse.Namespace, r: Result, subject: str) -> None:
    """Mail the link when a mail server is configured; otherwise print it for the admin."""
    link = r.data["link"]
    to = r.data.get("email")
    if args.smtp and to:
        host, _, port = args.smtp.rpartition(":")
        msg = EmailMessage()
        msg["From"] = args.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(f"{subject}:\n\n{link}\n")
        with smtplib.SMTP(host or args.smtp, int(port or 25), timeout=10) as s:
            s.send_message(msg)
        print(f"sent to {to}")
    else:
        print(f"no mail server configured: pass this link on: {link}")


def _init(admin: Admin, args: argparse.Namespace) -> int:
    import yaml

    from gatehouse.sor.fixtures import load_fixture

    if args.create_schema:
        admin.sor.create_schema()
    if args.fixture:
        raw = admin.config.bundle.files.get("fixture.yaml")
        if raw is None:
            raise AdminError("the bundle has no fixture.yaml")
        rev = load_fixture(admin.sor, admin.config.mapping, yaml.safe_load(raw)["relationships"])
        print(f"loaded the fixture at revision {rev}")
    rev, added = complete(admin.sor, admin.config)
    print(f"completed {len(added)} implied rows (revision {rev})")
    return 0


def _invite(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.invite(_actor(args), args.tenant, args.email, args.role, **_profile(args))
    _done(args, r)
    _deliver(admin, args, r, f"You are invited to {args.tenant}")
    return 0


def _accept(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.accept(
        args.token,
        password=_password(args),
        mfa_enabled=args.mfa,
        first_name=args.first_name,
        last_name=args.last_name,
    )
    return _done(args, r)


def _register(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.register(args.email, _password(args), args.first_name, args.last_name)
    return _done(args, r)


def _add(admin: Admin, args: argparse.Namespace) -> int:
    return _done(
        args, admin.add_to_tenant(_actor(args), args.tenant, args.user, args.role, args.user_type)
    )


def _remove(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.remove_from_tenant(_actor(args), args.tenant, args.user))


def _edit(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.edit_profile(_actor(args), args.tenant, args.user, **_profile(args)))


def _freeze(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.freeze(_actor(args), args.tenant, args.user))


def _unfreeze(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.unfreeze(_actor(args), args.tenant, args.user))


def _delete(admin: Admin, args: argparse.Namespace) -> int:
    if not args.yes:
        raise AdminError("deleting a user cannot be undone: add --yes to confirm")
    return _done(args, admin.delete_user(_actor(args), args.user))


def _resend(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.resend_activation(_actor(args), args.tenant, args.email)
    _done(args, r)
    _deliver(admin, args, r, f"Your invitation to {args.tenant}")
    return 0


def _reset_2fa(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.reset_2fa(_actor(args), args.tenant, args.user))


def _reset(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.password_reset(_actor(args), args.tenant, args.user)
    _done(args, r)
    u = admin.sor.rows("users", id=r.data["user"])
    email = u[0]["email"] if u else None
    _deliver(
        admin,
        args,
        Result(r.revision, r.message, {**r.data, "email": email}),
        "Reset your password",
    )
    return 0


def _set_password(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.complete_password_reset(args.token, _password(args)))


def _history(admin: Admin, args: argparse.Namespace) -> int:
    rows = history(admin, _actor(args), args.tenant, args.user)
    if args.json:
        print(json.dumps(rows))
        return 0
    for h in rows:
        before = "" if h["before"] is None else json.dumps(h["before"], sort_keys=True)
        after = "" if h["after"] is None else json.dumps(h["after"], sort_keys=True)
        print(f"{h['at']}  r{h['revision']}  {h['actor']}  {h['action']}  {h['target']}")
        if before:
            print(f"    before: {before}")
        if after:
            print(f"    after:  {after}")
    return 0


def _export(admin: Admin, args: argparse.Namespace) -> int:
    table = export_users(admin, _actor(args), args.tenant, args.view)
    if args.out == "-":
        sys.stdout.write(table.csv())
    elif args.out.lower().endswith(".xlsx"):
        table.xlsx(args.out, f"{args.view} view")
        print(f"wrote {len(table.rows)} users to {args.out}")
    elif args.out.lower().endswith(".csv"):
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(table.csv())
        print(f"wrote {len(table.rows)} users to {args.out}")
    else:
        raise AdminError(f"--out {args.out}: expected FILE.csv, FILE.xlsx or -")
    return 0


def _progress(enabled: bool) -> Callable[[int, int], None]:
    last = [-1]

    def show(i: int, n: int) -> None:
        if not enabled or n <= 0:
            return
        pct = i * 100 // n
        if pct == last[0]:
            return
        last[0] = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        sys.stderr.write(f"\rimporting [{bar}] {pct:3d}%")
        if i >= n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _import(admin: Admin, args: argparse.Namespace) -> int:
    actor = _actor(args)
    if args.limit < 1:
        raise AdminError("--limit must be at least 1")
    rows = read_rows(args.file)
    rep = import_users(
        admin,
        actor,
        args.tenant,
        rows,
        dry_run=args.dry_run,
        limit=args.limit,
        progress=_progress(not args.no_progress),
    )
    for rej in rep.rejected:
        print(
            f"line {rej.line}: {rej.email or '(no e-mail)'}: rejected: {rej.reason}",
            file=sys.stderr,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": rep.dry_run,
                    "revision": rep.revision,
                    "total": rep.total,
                    "created": [{k: v for k, v in c.items() if k != "link"} for c in rep.created],
                    "rejected": [r.__dict__ for r in rep.rejected],
                }
            )
        )
    verb = "would invite" if rep.dry_run else "invited"
    summary = f"{verb} {len(rep.created)} of {rep.total} users; {len(rep.rejected)} rejected"
    if not rep.dry_run:
        summary += f" (revision {rep.revision})"
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if not rep.dry_run and rep.created:
        if args.links:
            import csv

            with open(args.links, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["email", "link"])
                for c in rep.created:
                    w.writerow([c["email"], c["link"]])
            print(f"invitation links written to {args.links}", file=sys.stderr)
        elif not args.json:
            print("no mail server configured: pass these links on:")
            for c in rep.created:
                print(f"  {c['email']}: {c['link']}")
    return 2 if rep.rejected else 0


def _template(admin: Admin, args: argparse.Namespace) -> int:
    if not args.file.lower().endswith(".xlsx"):
        raise AdminError(f"{args.file}: the template is an .xlsx file")
    write_template(args.file, admin)
    print(f"wrote the import template to {args.file}")
    return 0


def _sub_add(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.add_subscriber(_actor(args), args.tenant, args.email))


def _sub_remove(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.remove_subscriber(_actor(args), args.tenant, args.email))


def _print_roles(args: argparse.Namespace, roles: list[dict[str, Any]]) -> int:
    if args.json:
        print(json.dumps(roles))
        return 0
    for r in roles:
        flags = [f for f in ("owner", "super_admin", "freeze_immune") if r.get(f)]
        print(f"{r['id']}\t{r['name']}" + (f"\t[{', '.join(flags)}]" if flags else ""))
        for c in r.get("cells", []):
            print(f"    {c}")
    return 0


def _templates(admin: Admin, args: argparse.Namespace) -> int:
    return _print_roles(args, admin.templates())


def _roles(admin: Admin, args: argparse.Namespace) -> int:
    return _print_roles(args, admin.list_roles(_actor(args), args.tenant))


def _role_create(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.create_role(
        _actor(args),
        args.tenant,
        args.name,
        template=args.template,
        cells=args.cell,
        super_admin=args.super_admin,
        freeze_immune=args.freeze_immune,
    )
    return _done(args, r)


def _role_edit(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.edit_role(
        _actor(args),
        args.role,
        add=args.add,
        remove=args.remove,
        name=args.name,
        super_admin=args.super_admin,
        freeze_immune=args.freeze_immune,
    )
    return _done(args, r)


def _role_delete(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.delete_role(_actor(args), args.role))


def _assign(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.assign_role(_actor(args), args.tenant, args.user, args.role))


def _unassign(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.unassign_role(_actor(args), args.tenant, args.user, args.role))


def _group_create(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.create_group(_actor(args), args.tenant, args.name))


def _group_rename(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.rename_group(_actor(args), args.tenant, args.group, args.name))


def _group_delete(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.delete_group(_actor(args), args.tenant, args.group))


def _group_add(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.add_member(_actor(args), args.tenant, args.group, args.member))


def _group_remove(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.remove_member(_actor(args), args.tenant, args.group, args.member))


def _grant(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.grant(_actor(args), args.tenant, args.subject, args.level, args.resource)
    return _done(args, r)


def _revoke(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.revoke(_actor(args), args.tenant, args.subject, args.resource))


def _assign_fn(kind: str, on: bool) -> Handler:
    def fn(admin: Admin, args: argparse.Namespace) -> int:
        actor = _actor(args)
        if kind == "datasets":
            d = admin.assign_dataset if on else admin.unassign_dataset
            return _done(args, d(actor, args.tenant, args.dataset, args.team))
        t = admin.assign_task if on else admin.unassign_task
        return _done(args, t(actor, args.tenant, args.task, args.user))

    return fn


def _tenant_create(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.create_tenant(_actor(args), args.tenant, args.name, args.parent))


def _auto_join(admin: Admin, args: argparse.Namespace) -> int:
    return _done(args, admin.set_auto_join(_actor(args), args.tenant, args.domain))


def _agency(admin: Admin, args: argparse.Namespace) -> int:
    r = admin.set_agency_manager(_actor(args), args.tenant, args.user, not args.remove)
    return _done(args, r)


def _preview(admin: Admin, args: argparse.Namespace) -> int:
    cells = preview(admin, _actor(args), args.tenant, args.user, args.resource)
    if args.json:
        print(json.dumps(cells))
        return 0
    width = max((len(c["resource"]) for c in cells), default=10)
    pw = max((len(c["permission"]) for c in cells), default=10)
    for c in cells:
        mark = "allow" if c["allowed"] else "deny "
        print(f"{c['resource']:<{width}}  {c['permission']:<{pw}}  {mark}  {c['decided_by']}")
    return 0
