"""Read-side admin workflows: user exports (audit and profile views), per-user history from
the audit log, and the preview of a user's effective permissions (from the engine's
explain). Each is authorized like the write workflows, but writes nothing."""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from gatehouse.admin.authz import Proof
from gatehouse.admin.config import AdminError
from gatehouse.admin.service import Admin, NotFound, roles_of

AUDIT_COLUMNS = ["user", "email", "groups", "role", "access level", "fund access", "status"]
PROFILE_COLUMNS = [
    "joining date",
    "email",
    "language",
    "name",
    "user type",
    "last login",
    "phone",
]


def _openpyxl(sub: str = "") -> Any:
    """openpyxl ships no type information: use it untyped."""
    return importlib.import_module("openpyxl" + (f".{sub}" if sub else ""))


def _fmt_time(v: Any) -> str:
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return "" if v is None else str(v)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    revision: int

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.rows)
        return buf.getvalue()

    def xlsx(self, path: str, title: str = "users") -> None:
        Workbook = _openpyxl().Workbook
        Font = _openpyxl("styles").Font

        wb = Workbook()
        ws = wb.active
        assert ws is not None
        ws.title = title[:31]
        ws.append(self.columns)
        for c in ws[1]:
            c.font = Font(bold=True)
        for r in self.rows:
            ws.append(r)
        for i, col in enumerate(self.columns, start=1):
            width = max([len(col)] + [len(r[i - 1]) for r in self.rows[:500]]) + 2
            ws.column_dimensions[ws.cell(1, i).column_letter].width = min(width, 60)
        ws.freeze_panes = "A2"
        wb.save(path)


def _tenant_users(admin: Admin, tenant: str) -> list[tuple[dict[str, Any], str]]:
    """(user row, status in the tenant) for members and pending invitees."""
    sor = admin.sor
    if not sor.rows("tenants", id=tenant):
        raise NotFound(f"no tenant {tenant!r}")
    users = {u["id"]: u for u in sor.rows("users")}
    by_email = {u["email"]: u for u in users.values()}
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for m in sor.rows("memberships", tenant_id=tenant):
        u = users.get(m["user_id"])
        if u is not None:
            out[u["id"]] = (u, "frozen" if m["status"] == "frozen" else u["status"])
    for i in sor.rows("invitations", tenant_id=tenant):
        u = by_email.get(i["email"])
        if u is not None and i["accepted_at"] is None and u["id"] not in out:
            out[u["id"]] = (u, "invited")
    return [out[k] for k in sorted(out)]


def export_users(admin: Admin, actor: str, tenant: str, view: str = "audit") -> Table:
    """Every member (and pending invitee) of `tenant`: the audit view (user, groups, role,
    access level, fund access, status) or the profile view."""
    if view not in ("audit", "profile"):
        raise AdminError(f"unknown export view {view!r}: audit or profile")
    revision = admin._authorize(None, actor, "users.view", tenant)
    members = _tenant_users(admin, tenant)
    if view == "profile":
        rows = [
            [
                _fmt_time(m_joined(admin, tenant, u["id"]) or u["created_at"]),
                u["email"],
                u["language"],
                " ".join(x for x in (u["first_name"], u["last_name"]) if x),
                u["user_type"],
                _fmt_time(u["last_login_at"]),
                u["phone"],
            ]
            for u, _st in members
        ]
        return Table(PROFILE_COLUMNS, rows, revision)
    cfg = admin.config
    sor = admin.sor
    groups = {g["id"]: g for g in sor.rows("groups", tenant_id=tenant)}
    gm = sor.rows("group_members")
    nested = cfg.groups.nested_type if cfg.groups else "group"
    parents: dict[tuple[str, str], list[str]] = {}
    for x in gm:
        if x["group_id"] in groups:
            parents.setdefault((x["member_type"], x["member_id"]), []).append(x["group_id"])

    def all_groups(uid: str) -> list[str]:
        seen: list[str] = []
        todo = list(parents.get(("user", uid), []))
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.append(g)
                todo += parents.get((nested, g), [])
        return seen

    role_names = _role_names(admin, tenant)
    grants = sor.rows("access_grants")
    acc = cfg.access
    rank = {lv: i for i, lv in enumerate(acc.levels.values())} if acc else {}
    label = {lv: k for k, v in (acc.levels.items() if acc else ()) for lv in [v]}
    rows = []
    for u, status in members:
        uid = u["id"]
        direct = parents.get(("user", uid), [])
        every = all_groups(uid)
        roles = _roles_of(admin, tenant, uid)
        fund_access: dict[str, str] = {}
        if acc is not None:
            subjects = {("user", uid)} | {(acc.subjects.get("group", "group"), g) for g in every}
            for g in grants:
                if (g["subject_type"], g["subject_id"]) not in subjects:
                    continue
                if g["resource_type"] != acc.resource_type or g["level"] not in rank:
                    continue
                if g["resource_id"] == "" and g["tenant_id"] != tenant:
                    continue
                key = g["resource_id"] or f"All {acc.resource_type}s"
                cur = fund_access.get(key)
                if cur is None or rank[g["level"]] > rank[cur]:
                    fund_access[key] = g["level"]
        best = max(fund_access.values(), key=lambda lv: rank[lv], default=None)
        admin_role = next((r for r in roles if r in cfg.roles.guard), None)
        if admin_role is not None and acc is not None and cfg.roles.model == "fixed":
            best_label = f"{role_names.get(admin_role, admin_role)} (all)"
        else:
            best_label = label.get(best, "") if best else ("none" if acc else "")
        rows.append(
            [
                uid,
                u["email"],
                "; ".join(groups[g]["name"] or g for g in direct),
                "; ".join(role_names.get(r, r) for r in roles),
                best_label,
                "; ".join(f"{k}: {label.get(v, v)}" for k, v in sorted(fund_access.items())),
                status,
            ]
        )
    return Table(AUDIT_COLUMNS, rows, revision)


def m_joined(admin: Admin, tenant: str, uid: str) -> Any:
    rows = admin.sor.rows("memberships", tenant_id=tenant, user_id=uid)
    return rows[0]["joined_at"] if rows else None


def _role_names(admin: Admin, tenant: str) -> dict[str, str]:
    cfg = admin.config
    if cfg.roles.model == "fixed":
        return {k: t.name for k, t in cfg.roles.templates.items()}
    return {
        r["id"]: r["name"] or str(r["id"]).rsplit("/", 1)[-1]
        for r in admin.sor.rows("roles", tenant_id=tenant)
    }


def _roles_of(admin: Admin, tenant: str, uid: str) -> list[str]:
    cfg = admin.config
    out = roles_of(admin.sor.rows, cfg, tenant, uid)
    if cfg.roles.model == "fixed":
        return out
    if cfg.agency_role:
        for b in admin.sor.rows(
            "role_bindings", role_id=cfg.agency_role, subject_type="user", subject_id=uid
        ):
            out.append(f"{cfg.agency_role} ({b['scope_id']})")
    return out


def history(admin: Admin, actor: str, tenant: str, user: str) -> list[dict[str, Any]]:
    """Every audit-log entry about `user` (and every action they took), oldest first."""
    admin._authorize(None, actor, "users.view", tenant)
    sor = admin.sor
    rows = sor.rows("users", id=user) or sor.rows("users", email=user.strip().lower())
    if not rows:
        raise NotFound(f"no user {user!r}")
    uid = rows[0]["id"]
    about = sor.rows("audit_log", target_type="user", target_id=uid)
    by = sor.rows("audit_log", actor=uid)
    seen: dict[int, dict[str, Any]] = {}
    for r in about + by:
        seen[int(r["id"])] = r
    out = []
    for r in sorted(seen.values(), key=lambda r: int(r["id"])):
        out.append(
            {
                "at": _fmt_time(r["at"]),
                "actor": r["actor"],
                "action": r["action"],
                "target": f"{r['target_type']}:{r['target_id']}",
                "before": None if r["before"] is None else json.loads(r["before"]),
                "after": None if r["after"] is None else json.loads(r["after"]),
                "revision": int(r["revision"]),
            }
        )
    return out


# preview -----------------------------------------------------------------------------------
_ROLE_RE = re.compile(r"@role:([^#\s]+)#member")
_TUPLE_RE = re.compile(r"tuple (\S+)")


def _allowed_leaves(p: Proof, path: list[str]) -> list[tuple[str, list[str]]]:
    """(tuple, labels on the way) of every allowed tuple leaf under allowed nodes."""
    if not p.allowed:
        return []
    here = [*path, p.label]
    m = _TUPLE_RE.match(p.label)
    out = [(m.group(1), here)] if m else []
    for c in p.children:
        if c.label.startswith("excluded if:"):
            continue
        out += _allowed_leaves(c, here)
    return out


def _blockers(p: Proof) -> list[str]:
    out = []
    if p.label.startswith("excluded if:") and p.allowed:
        out += [t for t, _ in _allowed_leaves(Proof(p.label, True, p.children), [])]
    for c in p.children:
        out += _blockers(c)
    return out


def decided_by(allowed: bool, proof: Proof) -> str:
    """Which role or rule decided a cell, read from the proof tree."""
    if allowed:
        why: list[str] = []
        for leaf, labels in _allowed_leaves(proof, []):
            text = " ".join([*labels, leaf])
            roles = _ROLE_RE.findall(text)
            if "#superadmin@" in text:
                item = f"Above permissions ({', '.join(dict.fromkeys(roles))})"
            elif "#agency_manager@" in text:
                item = f"agency manager ({leaf.split('#', 1)[0]})"
            elif roles:
                item = f"role {roles[-1]}"
            else:
                item = leaf
            if item not in why:
                why.append(item)
        return ", ".join(why) or "allowed"
    blocked = list(dict.fromkeys(_blockers(proof)))
    if blocked:
        return "blocked by " + ", ".join(blocked)
    return "no role or rule allows it"


def preview(
    admin: Admin, actor: str, tenant: str, user: str, resource: str | None = None
) -> list[dict[str, Any]]:
    """The user's effective permission matrix on the tenant (and its resources), or on one
    resource: each cell allowed or denied, with the role or rule that decided it."""
    cfg = admin.config
    revision = admin._authorize(None, actor, "permissions.preview", tenant)
    sor = admin.sor
    urows = sor.rows("users", id=user) or sor.rows("users", email=user.strip().lower())
    if not urows:
        raise NotFound(f"no user {user!r}")
    uid = urows[0]["id"]
    cells: list[tuple[str, str]] = []
    if resource:
        rtype = resource.split(":", 1)[0]
        perms = cfg.preview_tenant if rtype == cfg.tenant_type else cfg.preview_resources.get(rtype)
        if perms is None:
            raise AdminError(f"no preview for {rtype!r} resources in {cfg.product}")
        if rtype == cfg.tenant_type:
            if resource != cfg.tenant_ref(tenant):
                raise AdminError(f"{resource} is not {cfg.tenant_ref(tenant)}")
        else:
            rid = resource.split(":", 1)[1]
            if not sor.rows("resources", type=rtype, id=rid):
                raise NotFound(f"no {resource}")
            if _tenant_of(admin, rtype, rid) != tenant:
                raise AdminError(f"{resource} is not in {tenant}")
        cells = [(resource, p) for p in perms]
    else:
        cells = [(cfg.tenant_ref(tenant), p) for p in cfg.preview_tenant]
        for rtype, perms in cfg.preview_resources.items():
            for r in sorted(sor.rows("resources", type=rtype), key=lambda r: r["id"]):
                if _tenant_of(admin, rtype, r["id"]) == tenant:
                    cells += [(f"{rtype}:{r['id']}", p) for p in perms]
    out = []
    for res, perm in cells:
        ans, proof = admin.authz.explain(f"user:{uid}", perm, res, revision)
        if ans.error:
            raise AdminError(f"no decision for {perm} on {res}: {ans.error}")
        out.append(
            {
                "resource": res,
                "permission": perm,
                "allowed": ans.allowed,
                "decided_by": _name_roles(admin, decided_by(ans.allowed, proof)),
            }
        )
    return out


def _name_roles(admin: Admin, why: str) -> str:
    """Fixed roles are relations on the tenant (account:acme#admin@user:ana): name them."""
    cfg = admin.config
    if cfg.roles.model != "fixed":
        return why
    out = []
    for part in why.split(", "):
        obj, _, rest = part.partition("#")
        rel = rest.split("@", 1)[0]
        t = cfg.roles.templates.get(rel)
        if obj.startswith(f"{cfg.tenant_type}:") and t is not None and "@" in rest:
            out.append(f"role {t.name} ({obj})")
        else:
            out.append(part)
    return ", ".join(out)


def _tenant_of(admin: Admin, rtype: str, rid: str, depth: int = 0) -> str:
    rows = admin.sor.rows("resources", type=rtype, id=rid)
    if not rows or depth > 8:
        return ""
    r = rows[0]
    if r["tenant_id"]:
        return str(r["tenant_id"])
    if r["parent_type"] and r["parent_id"]:
        return _tenant_of(admin, r["parent_type"], r["parent_id"], depth + 1)
    return ""
