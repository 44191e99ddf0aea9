"""`admin init`: make the SoR complete for the admin workflows.

A bundle's fixture (or another application) may write only the rows that produce tuples:
role bindings without a `roles` row, group members without a `groups` row, role holders of a
company without a membership. The admin layer needs those rows (which tenant a role or group
belongs to, who is a member). `complete` adds every implied row that maps to no tuple, so
the decisions do not change, in one transaction.
"""

from __future__ import annotations

from typing import Any

from gatehouse.admin.config import AdminConfig
from gatehouse.sor.store import SystemOfRecord, WriteTx
from gatehouse.sync.mapping import MappingError


def _add(tx: WriteTx, cfg: AdminConfig, table: str, row: dict[str, Any], added: list[str]) -> None:
    full = dict(row)
    try:
        if cfg.mapping.tuples(table, _with_defaults(table, full)):
            return  # would change decisions: not ours to add
    except MappingError:
        return
    tx.insert(table, **full)
    added.append(f"{table}:{'/'.join(str(v) for v in row.values())}")


def _with_defaults(table: str, row: dict[str, Any]) -> dict[str, Any]:
    from gatehouse.sor.tables import WRITABLE

    out: dict[str, Any] = {}
    for c in WRITABLE[table].columns:
        if c.name in row:
            out[c.name] = row[c.name]
        elif c.default is not None and getattr(c.default, "is_scalar", False):
            out[c.name] = c.default.arg  # type: ignore[attr-defined]
    return out


def complete(
    sor: SystemOfRecord, cfg: AdminConfig, actor: str = "gatehouse-admin-init"
) -> tuple[int, list[str]]:
    added: list[str] = []
    with sor.transaction() as tx:
        tenants = {t["id"]: t for t in tx.select("tenants")}

        def tenant(tid: str) -> None:
            if tid and tid not in tenants:
                row = {"id": tid, "kind": cfg.tenant_kind, "name": tid}
                _add(tx, cfg, "tenants", row, added)
                tenants[tid] = row

        members: set[tuple[str, str]] = {
            (m["tenant_id"], m["user_id"]) for m in tx.select("memberships")
        }

        def member(tid: str, uid: str) -> None:
            if tid and (tid, uid) not in members and tx.get("users", id=uid) is not None:
                _add(tx, cfg, "memberships", {"tenant_id": tid, "user_id": uid}, added)
                members.add((tid, uid))

        for m in tx.select("memberships"):
            tenant(m["tenant_id"])
        for b in tx.select("role_bindings"):
            if b["scope_type"] == cfg.tenant_type:
                tenant(b["scope_id"])
                if b["subject_type"] == "user":
                    member(b["scope_id"], b["subject_id"])
        for r in tx.select("resources"):
            tenant(r["tenant_id"])
        for r in tx.select("roles"):
            tenant(r["tenant_id"])
        if cfg.roles.model == "tenant":
            ids = {b["role_id"] for b in tx.select("role_bindings", scope_type="")}
            ids |= {c["role_id"] for c in tx.select("role_cells")}
            have = {r["id"] for r in tx.select("roles")}
            for rid in sorted(ids - have):
                tid, _, slug = rid.rpartition("/")
                if not tid:
                    continue
                tenant(tid)
                tpl = cfg.roles.templates.get(slug)
                _add(
                    tx,
                    cfg,
                    "roles",
                    {
                        "id": rid,
                        "tenant_id": tid,
                        "name": tpl.name if tpl else slug,
                        "template": slug if tpl else "",
                    },
                    added,
                )
            for r in tx.select("roles"):
                for b in tx.select("role_bindings", role_id=r["id"], subject_type="user"):
                    member(r["tenant_id"], b["subject_id"])
        g = cfg.groups
        if g is not None:
            have = {x["id"] for x in tx.select("groups")}
            gm = tx.select("group_members")
            ids = {x["group_id"] for x in gm} | {
                x["member_id"] for x in gm if x["member_type"] == g.nested_type
            }
            grants = tx.select("access_grants")
            ids |= {x["subject_id"] for x in grants if x["subject_type"] in (g.kind, g.nested_type)}
            for gid in sorted(ids - have):
                tid = _group_tenant(tx, gid, gm, grants, members)
                if tid is None:
                    continue
                _add(
                    tx,
                    cfg,
                    "groups",
                    {"id": gid, "tenant_id": tid, "kind": g.kind, "name": gid},
                    added,
                )
            for x in gm:
                grow = tx.get("groups", id=x["group_id"])
                if grow is not None and x["member_type"] == "user":
                    member(grow["tenant_id"], x["member_id"])
        if added:
            tx.audit(actor, "admin.init", "sor", "", None, {"added": added})
    return tx.revision, added


def _group_tenant(
    tx: WriteTx,
    gid: str,
    gm: list[dict[str, Any]],
    grants: list[dict[str, Any]],
    members: set[tuple[str, str]],
) -> str | None:
    if "/" in gid:
        return gid.split("/", 1)[0]
    for x in grants:
        if x["subject_id"] == gid:
            if x["tenant_id"]:
                return str(x["tenant_id"])
            r = tx.get("resources", type=x["resource_type"], id=x["resource_id"])
            if r is not None and r["tenant_id"]:
                return str(r["tenant_id"])
    users = {x["member_id"] for x in gm if x["group_id"] == gid and x["member_type"] == "user"}
    found = {t for t, u in members if u in users}
    return found.pop() if len(found) == 1 else None
