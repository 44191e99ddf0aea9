"""The admin workflows of the seed products over the system of record (docs/admin.md).

Every workflow is one SoR transaction: it first asks the authorizer whether the acting user
holds the permission admin.yaml names for the action (at the SoR revision the transaction
starts from, with the write lock held, so nothing changes between the decision and the
write), then validates, writes the rows and an audit_log row, and returns the revision it
produced. Any refusal or bad input raises `AdminError` and rolls everything back.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gatehouse.admin.authz import Authorizer
from gatehouse.admin.config import AdminConfig, AdminError
from gatehouse.admin.secrets import hash_password, hash_token, new_token, verify_password
from gatehouse.graph.tuples import ID_PATTERN
from gatehouse.model.errors import SchemaError
from gatehouse.sor.store import RowError, SystemOfRecord, WriteTx


class Denied(AdminError):
    """The acting user is not authorized (or no decision could be made: fail closed)."""


class NotFound(AdminError):
    pass


@dataclass(frozen=True)
class Result:
    """What a workflow did: the SoR revision its changes are visible at (pass it to the
    decision server as at_least_revision), a one-line message, and details."""

    revision: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


_EMAIL_RE = re.compile(r"[A-Za-z0-9._+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*")
_ID_RE = re.compile(ID_PATTERN)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")
_LANG_RE = re.compile(r"[a-z]{2}([_-][A-Za-z]{2})?")
_PHONE_RE = re.compile(r"\+?[0-9 ()\-.]{3,32}")
PROFILE_FIELDS = ("first_name", "last_name", "language", "phone", "user_type")
MIN_PASSWORD = 8


def norm_email(email: str) -> str:
    e = (email or "").strip().lower()
    if not e:
        raise AdminError("an e-mail address is required")
    if len(e) > 200 or not _EMAIL_RE.fullmatch(e):
        raise AdminError(f"{email!r} is not a valid e-mail address")
    return e


def slugify(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", (name or "").strip().lower()).strip("_")
    if not s or not _SLUG_RE.fullmatch(s):
        raise AdminError(f"{name!r} is not a usable name (letters and digits, at most 63)")
    return s


def check_profile(config: AdminConfig, values: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        if k not in PROFILE_FIELDS:
            raise AdminError(f"{k!r} is not a profile field ({', '.join(PROFILE_FIELDS)})")
        v = "" if v is None else str(v).strip()
        if k in ("first_name", "last_name") and len(v) > 200:
            raise AdminError(f"{k} is longer than 200 characters")
        if k == "first_name" and not v:
            raise AdminError("first_name may not be empty")
        if k == "language" and not _LANG_RE.fullmatch(v):
            raise AdminError(f"language {v!r} is not a language code such as en or pt-BR")
        if k == "phone" and v and not _PHONE_RE.fullmatch(v):
            raise AdminError(f"phone {v!r} is not a phone number")
        if k == "user_type" and v not in config.user_types:
            raise AdminError(f"user type {v!r} is not one of {', '.join(config.user_types)}")
        out[k] = v
    return out


def _aware(t: Any) -> dt.datetime | None:
    if not isinstance(t, dt.datetime):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _redeemable(
    tx: WriteTx, table: str, used: str, token: str, kind: str, what: str, hint: str = ""
) -> dict[str, Any]:
    """The row of a single-use token (stored hashed) that is known, unused and unexpired;
    AdminError naming which of those it is not."""
    row = tx.get(table, token_hash=hash_token(token.strip()))
    if row is None:
        raise AdminError(f"unknown {kind} token")
    if row[used] is not None:
        raise AdminError(f"this {what} has already been used")
    exp = _aware(row["expires_at"])
    if exp is None or exp <= tx.now:
        raise AdminError(f"this {what} has expired{hint}")
    return row


def roles_of(
    select: Callable[..., list[dict[str, Any]]], cfg: AdminConfig, tenant: str, uid: str
) -> list[str]:
    """The ids of the roles `uid` holds in `tenant`; `select(table, **where)` reads rows
    (inside a write transaction, or straight from the SoR for reports)."""
    if cfg.roles.model == "fixed":
        rows = select(
            "role_bindings",
            subject_type="user",
            subject_id=uid,
            scope_type=cfg.tenant_type,
            scope_id=tenant,
        )
        return sorted(r["role_id"] for r in rows if r["role_id"] in cfg.roles.templates)
    mine = {r["id"] for r in select("roles", tenant_id=tenant)}
    rows = select("role_bindings", subject_type="user", subject_id=uid, scope_type="")
    return sorted(r["role_id"] for r in rows if r["role_id"] in mine)


class Admin:
    """The admin API of one product (its bundle's admin.yaml) over one system of record."""

    def __init__(self, sor: SystemOfRecord, config: AdminConfig, authorizer: Authorizer) -> None:
        self.sor = sor
        self.config = config
        self.authz = authorizer

    # plumbing -----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[WriteTx]:
        try:
            with self.sor.transaction() as tx:
                yield tx
        except RowError as e:
            raise AdminError(str(e)) from e

    def _authorize(
        self, tx: WriteTx | None, actor: str, action: str, tenant: str, **fields: str
    ) -> int:
        """Raise Denied unless `actor` may do `action` in `tenant`; returns the revision
        the decision was made at."""
        cfg = self.config
        rule = cfg.actions.get(action)
        if rule is None:
            raise Denied(f"{cfg.product} has no admin action {action!r}")
        row = tx.get("users", id=actor) if tx else self._one("users", id=actor)
        if row is None or row["status"] != "active":
            raise Denied(f"refused: {actor!r} is not an active user")
        resource = rule.resource.format(tenant_type=cfg.tenant_type, tenant=tenant, **fields)
        revision = tx.revision - 1 if tx is not None else self.sor.revision()
        ans = self.authz.check(f"user:{actor}", rule.permission, resource, revision)
        if ans.error:
            raise Denied(f"refused: no authorization decision for {action} ({ans.error})")
        if not ans.allowed:
            raise Denied(
                f"refused: {actor} may not {action}: needs {rule.permission} on {resource}"
            )
        return revision

    def _one(self, table: str, **key: Any) -> dict[str, Any] | None:
        rows = self.sor.rows(table, **key)
        return rows[0] if rows else None

    def _tenant(self, tx: WriteTx, tenant: str) -> dict[str, Any]:
        row = tx.get("tenants", id=tenant)
        if row is None:
            raise NotFound(f"no tenant {tenant!r}")
        return row

    def _user(self, tx: WriteTx, uid: str) -> dict[str, Any]:
        row = tx.get("users", id=uid)
        if row is None:
            rows = tx.select("users", email=uid.strip().lower())
            if not rows:
                raise NotFound(f"no user {uid!r}")
            row = rows[0]
        if row["status"] == "deleted":
            raise AdminError(f"user {row['id']} is deleted")
        return row

    def _member(self, tx: WriteTx, tenant: str, uid: str) -> dict[str, Any]:
        m = tx.get("memberships", tenant_id=tenant, user_id=uid)
        if m is None:
            raise AdminError(f"{uid} is not a member of {tenant}")
        return m

    def _chain(self, tx: WriteTx, tenant: str) -> list[str]:
        out = [tenant]
        cur = tx.get("tenants", id=tenant)
        while cur is not None and cur["parent_id"] and cur["parent_id"] not in out:
            out.append(cur["parent_id"])
            cur = tx.get("tenants", id=cur["parent_id"])
        return out

    # roles of users -----------------------------------------------------------------
    def _roles_of(self, tx: WriteTx, tenant: str, uid: str) -> list[str]:
        return roles_of(tx.select, self.config, tenant, uid)

    def _role_row(self, tx: WriteTx, role: str) -> dict[str, Any]:
        row = tx.get("roles", id=role)
        if row is None:
            raise NotFound(f"no role {role!r}")
        return row

    def _resolve_role(self, tx: WriteTx, tenant: str, name: str) -> str:
        cfg = self.config
        want = name.strip()
        if cfg.roles.model == "fixed":
            for slug, t in cfg.roles.templates.items():
                if want.lower() in (slug.lower(), t.name.lower()):
                    return slug
            names = ", ".join(t.name for t in cfg.roles.templates.values())
            raise AdminError(f"unknown role {name!r}: {cfg.product} roles are {names}")
        rows = tx.select("roles", tenant_id=tenant)
        for r in rows:
            if want == r["id"]:
                return str(r["id"])
        for r in rows:
            slug = str(r["id"]).rsplit("/", 1)[-1]
            if want.lower() in (slug.lower(), str(r["name"]).lower()):
                return str(r["id"])
        raise AdminError(
            f"unknown role {name!r} in {tenant}: roles are "
            + (", ".join(sorted(str(r["id"]) for r in rows)) or "(none)")
        )

    def _bind(self, tx: WriteTx, tenant: str, uid: str, role: str) -> None:
        cfg = self.config
        if cfg.roles.model == "fixed":
            key = {
                "role_id": role,
                "subject_type": "user",
                "subject_id": uid,
                "scope_type": cfg.tenant_type,
                "scope_id": tenant,
            }
            if cfg.roles.single:
                for other in self._roles_of(tx, tenant, uid):
                    if other != role:
                        tx.delete("role_bindings", **{**key, "role_id": other})
        else:
            key = {
                "role_id": role,
                "subject_type": "user",
                "subject_id": uid,
                "scope_type": "",
                "scope_id": "",
            }
        if tx.get("role_bindings", **key) is None:
            tx.insert("role_bindings", **key)

    def _unbind(self, tx: WriteTx, tenant: str, uid: str, role: str) -> bool:
        cfg = self.config
        fixed = cfg.roles.model == "fixed"
        gone = tx.delete(
            "role_bindings",
            role_id=role,
            subject_type="user",
            subject_id=uid,
            scope_type=cfg.tenant_type if fixed else "",
            scope_id=tenant if fixed else "",
        )
        return gone is not None

    # the "never without an owner or admin" rule --------------------------------------
    def _guard_holders(self, tx: WriteTx, tenant: str) -> set[str]:
        cfg = self.config
        guard = cfg.roles.guard
        holders: set[str] = set()
        if cfg.roles.model == "fixed":
            for rid in guard:
                for r in tx.select(
                    "role_bindings",
                    role_id=rid,
                    subject_type="user",
                    scope_type=cfg.tenant_type,
                    scope_id=tenant,
                ):
                    holders.add(r["subject_id"])
        else:
            flagged = [
                r["id"]
                for r in tx.select("roles", tenant_id=tenant)
                if ("is_owner" in guard and r["is_owner"])
                or ("super_admin" in guard and r["super_admin"])
            ]
            for rid in flagged:
                for r in tx.select("role_bindings", role_id=rid, subject_type="user"):
                    holders.add(r["subject_id"])
            if "agency_manager" in guard and cfg.agency_role:
                for t in self._chain(tx, tenant):
                    for r in tx.select(
                        "role_bindings",
                        role_id=cfg.agency_role,
                        subject_type="user",
                        scope_type=cfg.tenant_type,
                        scope_id=t,
                    ):
                        holders.add(r["subject_id"])
        out = set()
        for uid in holders:
            u = tx.get("users", id=uid)
            m = tx.get("memberships", tenant_id=tenant, user_id=uid)
            if u is not None and u["status"] == "active" and (m is None or m["status"] != "frozen"):
                out.add(uid)
        return out

    @contextmanager
    def _guarded(self, tx: WriteTx, tenants: Sequence[str]) -> Iterator[None]:
        if not self.config.roles.guard:
            yield
            return
        before = {t: bool(self._guard_holders(tx, t)) for t in tenants}
        yield
        for t, had in before.items():
            if had and not self._guard_holders(tx, t):
                what = " or ".join(self.config.roles.guard)
                raise AdminError(f"refused: {t} would be left without an owner or admin ({what})")

    # invitations and registration ----------------------------------------------------
    def _link(self, token: str, kind: str = "invitation") -> str:
        base = self.config.link_base
        if kind != "invitation":
            base = base.replace("invitation", kind) if "invitation" in base else base + kind + "/"
        return f"{base}{token}"

    def _invite_in_tx(
        self,
        tx: WriteTx,
        actor: str,
        tenant: str,
        email: str,
        role: str | None,
        profile: dict[str, str],
        existing: dict[str, Any] | None,
    ) -> tuple[str, str]:
        cfg = self.config
        if existing is None:
            uid = email
            if not _ID_RE.fullmatch(uid):
                raise AdminError(f"{email!r} cannot be used as a user id")
            tx.insert(
                "users",
                id=uid,
                email=email,
                status="invited",
                created_at=tx.now,
                **{"first_name": "", **profile},
            )
        else:
            uid = existing["id"]
        token = new_token()
        tx.insert(
            "invitations",
            token_hash=hash_token(token),
            email=email,
            tenant_id=tenant,
            role_id=role or "",
            invited_by=actor,
            created_at=tx.now,
            expires_at=tx.now + dt.timedelta(days=cfg.invitation_days),
        )
        tx.audit(
            actor,
            "user.invite",
            "user",
            uid,
            None,
            {"tenant": tenant, "email": email, "role": role or "", **profile},
        )
        return uid, token

    def invite(
        self,
        actor: str,
        tenant: str,
        email: str,
        role: str | None = None,
        **profile: str,
    ) -> Result:
        """Invite `email` to `tenant`. The invitee gets no access (no membership, no role)
        until they accept; the token is valid for invitation_days and stored hashed."""
        email = norm_email(email)
        prof = check_profile(self.config, {k: v for k, v in profile.items() if v is not None})
        with self._tx() as tx:
            self._authorize(tx, actor, "users.invite", tenant)
            self._tenant(tx, tenant)
            role_id = self._pick_role(tx, tenant, role)
            existing = self._existing_for_invite(tx, tenant, email)
            uid, token = self._invite_in_tx(tx, actor, tenant, email, role_id, prof, existing)
        return Result(
            tx.revision,
            f"invited {email} to {tenant}" + (f" as {role_id}" if role_id else ""),
            {"user": uid, "token": token, "link": self._link(token), "email": email},
        )

    def _pick_role(self, tx: WriteTx, tenant: str, role: str | None) -> str | None:
        if role:
            return self._resolve_role(tx, tenant, role)
        d = self.config.roles.default
        if d is None:
            return None
        if self.config.roles.model == "fixed":
            return d
        rid = self.config.role_id(tenant, d)
        return rid if tx.get("roles", id=rid) is not None else None

    def _existing_for_invite(self, tx: WriteTx, tenant: str, email: str) -> dict[str, Any] | None:
        rows = tx.select("users", email=email)
        if not rows:
            if tx.get("users", id=email) is not None:
                raise AdminError(f"the id {email} is taken by another user")
            return None
        u = rows[0]
        if u["status"] == "deleted":
            raise AdminError(f"{email} belongs to a deleted user")
        if tx.get("memberships", tenant_id=tenant, user_id=u["id"]) is not None:
            raise AdminError(f"{email} is already a member of {tenant}")
        if u["status"] == "active":
            raise AdminError(
                f"{email} already has an account: add them with `admin user add` instead"
            )
        return u

    def accept(
        self,
        token: str,
        *,
        password: str,
        mfa_enabled: bool = False,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> Result:
        """Accept an invitation: register (or, for an existing user, join) and receive the
        invited role. Single use; refused after expiry, and without 2FA where required."""
        if len(password or "") < MIN_PASSWORD:
            raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
        prof = check_profile(
            self.config,
            {
                k: v
                for k, v in (("first_name", first_name), ("last_name", last_name))
                if v is not None
            },
        )
        with self._tx() as tx:
            inv = _redeemable(
                tx,
                "invitations",
                "accepted_at",
                token,
                "invitation",
                "invitation",
                ": ask for a new one",
            )
            if self.config.require_2fa and not mfa_enabled:
                raise AdminError(f"{self.config.product} requires two-factor authentication")
            rows = tx.select("users", email=inv["email"])
            if not rows or rows[0]["status"] == "deleted":
                raise AdminError("the invited user no longer exists")
            user = rows[0]
            uid = user["id"]
            changes: dict[str, Any] = dict(prof)
            if user["status"] == "invited":
                changes.update(status="active", password_hash=hash_password(password))
            elif not verify_password(password, user["password_hash"]):
                # An existing account joins another tenant: prove it is theirs.
                raise AdminError("wrong password for the existing account of this e-mail")
            if not user["first_name"] and "first_name" not in changes:
                changes["first_name"] = inv["email"].split("@", 1)[0]
            changes["mfa_enabled"] = bool(mfa_enabled or user["mfa_enabled"])
            tx.update("users", {"id": uid}, **changes)
            tenant = inv["tenant_id"]
            self._tenant(tx, tenant)
            if tx.get("memberships", tenant_id=tenant, user_id=uid) is None:
                tx.insert("memberships", tenant_id=tenant, user_id=uid, joined_at=tx.now)
            if inv["role_id"]:
                self._bind(tx, tenant, uid, inv["role_id"])
            tx.update("invitations", {"token_hash": inv["token_hash"]}, accepted_at=tx.now)
            tx.audit(
                uid,
                "user.accept",
                "user",
                uid,
                {"status": user["status"]},
                {"status": "active", "tenant": tenant, "role": inv["role_id"]},
            )
        return Result(tx.revision, f"{uid} joined {tenant}", {"user": uid, "tenant": tenant})

    def resend_activation(self, actor: str, tenant: str, email: str) -> Result:
        """A new invitation token for a pending invitee; the old tokens stop working."""
        email = norm_email(email)
        with self._tx() as tx:
            self._authorize(tx, actor, "users.invite", tenant)
            rows = tx.select("users", email=email)
            if not rows or rows[0]["status"] != "invited":
                raise AdminError(f"{email} has no pending activation")
            pending = [
                r
                for r in tx.select("invitations", email=email, tenant_id=tenant)
                if r["accepted_at"] is None
            ]
            if not pending:
                raise AdminError(f"{email} has no pending invitation to {tenant}")
            role = max(pending, key=lambda r: _aware(r["created_at"]) or tx.now)["role_id"]
            for r in pending:
                tx.delete("invitations", token_hash=r["token_hash"])
            token = new_token()
            tx.insert(
                "invitations",
                token_hash=hash_token(token),
                email=email,
                tenant_id=tenant,
                role_id=role,
                invited_by=actor,
                created_at=tx.now,
                expires_at=tx.now + dt.timedelta(days=self.config.invitation_days),
            )
            tx.audit(
                actor, "user.resend_activation", "user", rows[0]["id"], None, {"tenant": tenant}
            )
        return Result(
            tx.revision,
            f"new activation link for {email}",
            {"user": rows[0]["id"], "token": token, "link": self._link(token), "email": email},
        )

    def register(self, email: str, password: str, first_name: str, last_name: str = "") -> Result:
        """Self-service sign-up. Tenants whose auto-join domain is the e-mail's domain take
        the new user in as a member with no role (a default team holds them automatically)."""
        email = norm_email(email)
        if len(password or "") < MIN_PASSWORD:
            raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
        prof = check_profile(self.config, {"first_name": first_name, "last_name": last_name})
        domain = email.split("@", 1)[1]
        with self._tx() as tx:
            if tx.select("users", email=email) or tx.get("users", id=email) is not None:
                raise AdminError(f"{email} is already registered or invited")
            tx.insert(
                "users",
                id=email,
                email=email,
                status="active",
                password_hash=hash_password(password),
                created_at=tx.now,
                **prof,
            )
            joined = []
            for t in tx.select("tenants", auto_join_domain=domain):
                tx.insert("memberships", tenant_id=t["id"], user_id=email, joined_at=tx.now)
                joined.append(t["id"])
            tx.audit(email, "user.register", "user", email, None, {"auto_joined": joined})
        return Result(
            tx.revision,
            f"registered {email}" + (f"; joined {', '.join(joined)}" if joined else ""),
            {"user": email, "joined": joined},
        )

    def add_to_tenant(
        self,
        actor: str,
        tenant: str,
        user: str,
        role: str | None = None,
        user_type: str | None = None,
    ) -> Result:
        """Add an existing registered user to another tenant (no new registration)."""
        with self._tx() as tx:
            self._authorize(tx, actor, "users.invite", tenant)
            self._tenant(tx, tenant)
            u = self._user(tx, user)
            uid = u["id"]
            if u["status"] != "active":
                raise AdminError(f"{uid} has not registered yet: resend the activation instead")
            if tx.get("memberships", tenant_id=tenant, user_id=uid) is not None:
                raise AdminError(f"{uid} is already a member of {tenant}")
            role_id = self._pick_role(tx, tenant, role)
            tx.insert("memberships", tenant_id=tenant, user_id=uid, joined_at=tx.now)
            if role_id:
                self._bind(tx, tenant, uid, role_id)
            if user_type:
                tx.update(
                    "users", {"id": uid}, **check_profile(self.config, {"user_type": user_type})
                )
            tx.audit(
                actor, "user.add", "user", uid, None, {"tenant": tenant, "role": role_id or ""}
            )
        return Result(tx.revision, f"added {uid} to {tenant}", {"user": uid})

    def remove_from_tenant(self, actor: str, tenant: str, user: str) -> Result:
        """Take a member out of one tenant: membership, roles, groups and grants there."""
        with self._tx() as tx:
            self._authorize(tx, actor, "users.delete", tenant)
            u = self._user(tx, user)
            uid = u["id"]
            self._member(tx, tenant, uid)
            with self._guarded(tx, [tenant]):
                before = self._strip(tx, tenant, uid)
            tx.audit(actor, "user.remove", "user", uid, before, {"tenant": tenant})
        return Result(tx.revision, f"removed {uid} from {tenant}", {"user": uid})

    def _strip(self, tx: WriteTx, tenant: str, uid: str) -> dict[str, Any]:
        """Remove everything that gives `uid` access in `tenant`; returns what went."""
        cfg = self.config
        roles = self._roles_of(tx, tenant, uid)
        for r in roles:
            self._unbind(tx, tenant, uid, r)
        if cfg.agency_role:
            tx.delete_where(
                "role_bindings",
                role_id=cfg.agency_role,
                subject_type="user",
                subject_id=uid,
                scope_type=cfg.tenant_type,
                scope_id=tenant,
            )
        groups = {g["id"] for g in tx.select("groups", tenant_id=tenant)}
        left_groups = []
        for gm in tx.select("group_members", member_type="user", member_id=uid):
            if gm["group_id"] in groups:
                tx.delete(
                    "group_members", group_id=gm["group_id"], member_type="user", member_id=uid
                )
                left_groups.append(gm["group_id"])
        grants = []
        for g in tx.select("access_grants", subject_type="user", subject_id=uid):
            if g["tenant_id"] in (tenant, "") and self._in_tenant(tx, tenant, g):
                tx.delete("access_grants", **g)
                grants.append(f"{g['level']}:{g['resource_type']}:{g['resource_id'] or '*'}")
        tasks = []
        for a in tx.select("assignments", assignee_type="user", assignee_id=uid):
            if self._resource_tenant(tx, a["resource_type"], a["resource_id"]) == tenant:
                tx.delete("assignments", **a)
                tasks.append(f"{a['resource_type']}:{a['resource_id']}")
        m = tx.delete("memberships", tenant_id=tenant, user_id=uid)
        return {
            "tenant": tenant,
            "roles": roles,
            "groups": sorted(left_groups),
            "grants": grants,
            "assignments": tasks,
            "membership": None if m is None else m["status"],
        }

    def _in_tenant(self, tx: WriteTx, tenant: str, grant: dict[str, Any]) -> bool:
        if grant["tenant_id"] == tenant:
            return True
        if not grant["resource_id"]:
            return False
        return self._resource_tenant(tx, grant["resource_type"], grant["resource_id"]) == tenant

    def _resource_tenant(self, tx: WriteTx, rtype: str, rid: str, depth: int = 0) -> str:
        row = tx.get("resources", type=rtype, id=rid)
        if row is None or depth > 8:
            return ""
        if row["tenant_id"]:
            return str(row["tenant_id"])
        if row["parent_type"] and row["parent_id"]:
            return self._resource_tenant(tx, row["parent_type"], row["parent_id"], depth + 1)
        return ""

    def delete_user(self, actor: str, user: str) -> Result:
        """Delete a user for good: they lose every membership, role, group and grant; what
        references them (creator of objects, audit rows) keeps the id, and the user row
        stays with status 'deleted'. Needs users.delete in every tenant they belong to."""
        with self._tx() as tx:
            u = self._user(tx, user)
            uid = u["id"]
            tenants = sorted(m["tenant_id"] for m in tx.select("memberships", user_id=uid))
            pending = sorted({i["tenant_id"] for i in tx.select("invitations", email=u["email"])})
            scope = tenants or pending
            if not scope:
                raise AdminError(f"{uid} belongs to no tenant you could delete them from")
            for t in scope:
                self._authorize(tx, actor, "users.delete", t)
            if uid == actor:
                raise AdminError("refused: you cannot delete yourself")
            with self._guarded(tx, tenants):
                stripped = [self._strip(tx, t, uid) for t in tenants]
            for i in tx.select("invitations", email=u["email"]):
                if i["accepted_at"] is None:
                    tx.delete("invitations", token_hash=i["token_hash"])
            for r in tx.select("password_resets", user_id=uid):
                tx.delete("password_resets", token_hash=r["token_hash"])
            tx.update("users", {"id": uid}, status="deleted", password_hash=None, mfa_enabled=False)
            tx.audit(
                actor,
                "user.delete",
                "user",
                uid,
                {"status": u["status"], "tenants": stripped},
                {"status": "deleted"},
            )
        return Result(tx.revision, f"deleted {uid}", {"user": uid})

    def edit_profile(self, actor: str, tenant: str, user: str, **changes: Any) -> Result:
        values = check_profile(self.config, {k: v for k, v in changes.items() if v is not None})
        if not values:
            raise AdminError("nothing to change: give at least one profile field")
        with self._tx() as tx:
            u = self._user(tx, user)
            if u["id"] != actor:  # editing one's own profile needs no admin right
                self._authorize(tx, actor, "users.edit", tenant)
                self._member_or_invited(tx, tenant, u)
            old = {k: u[k] for k in values}
            tx.update("users", {"id": u["id"]}, **values)
            tx.audit(actor, "user.edit", "user", u["id"], old, values)
        return Result(tx.revision, f"updated {u['id']}", {"user": u["id"]})

    def _member_or_invited(self, tx: WriteTx, tenant: str, u: dict[str, Any]) -> None:
        if tx.get("memberships", tenant_id=tenant, user_id=u["id"]) is not None:
            return
        if any(
            i["accepted_at"] is None
            for i in tx.select("invitations", email=u["email"], tenant_id=tenant)
        ):
            return
        raise AdminError(f"{u['id']} is not a member of {tenant}")

    def _set_frozen(self, actor: str, tenant: str, user: str, frozen: bool) -> Result:
        cfg = self.config
        if not cfg.freeze:
            raise AdminError(f"{cfg.product} has no freezing of users")
        with self._tx() as tx:
            self._authorize(tx, actor, "users.freeze", tenant)
            u = self._user(tx, user)
            uid = u["id"]
            m = self._member(tx, tenant, uid)
            want = "frozen" if frozen else "active"
            if m["status"] == want:
                raise AdminError(f"{uid} is already {want} in {tenant}")
            if frozen:
                if uid == actor:
                    raise AdminError("refused: you cannot freeze yourself")
                immune = [
                    r
                    for r in self._roles_of(tx, tenant, uid)
                    if (row := tx.get("roles", id=r)) is not None and row["freeze_immune"]
                ]
                if immune:
                    raise AdminError(
                        f"refused: {uid} holds {', '.join(immune)}, immune against freezing"
                    )
            with self._guarded(tx, [tenant]):
                tx.update("memberships", {"tenant_id": tenant, "user_id": uid}, status=want)
            tx.audit(
                actor,
                "user.freeze" if frozen else "user.unfreeze",
                "user",
                uid,
                {"tenant": tenant, "status": m["status"]},
                {"tenant": tenant, "status": want},
            )
        return Result(tx.revision, f"{uid} is {want} in {tenant}", {"user": uid})

    def freeze(self, actor: str, tenant: str, user: str) -> Result:
        return self._set_frozen(actor, tenant, user, True)

    def unfreeze(self, actor: str, tenant: str, user: str) -> Result:
        return self._set_frozen(actor, tenant, user, False)

    def password_reset(self, actor: str, tenant: str, user: str, hours: int = 24) -> Result:
        """A single-use password-reset link (stored hashed)."""
        with self._tx() as tx:
            u = self._user(tx, user)
            if u["id"] != actor:
                self._authorize(tx, actor, "users.edit", tenant)
                self._member(tx, tenant, u["id"])
            if u["status"] != "active":
                raise AdminError(f"{u['id']} has not registered yet: resend the activation")
            token = new_token()
            tx.insert(
                "password_resets",
                token_hash=hash_token(token),
                user_id=u["id"],
                expires_at=tx.now + dt.timedelta(hours=hours),
            )
            tx.audit(actor, "user.password_reset", "user", u["id"], None, {"expires_in_h": hours})
        return Result(
            tx.revision,
            f"password reset link for {u['id']}",
            {"user": u["id"], "token": token, "link": self._link(token, "password-reset")},
        )

    def reset_2fa(self, actor: str, tenant: str, user: str) -> Result:
        """Invalidate a user's second factor: they enrol again at their next sign-in."""
        with self._tx() as tx:
            u = self._user(tx, user)
            self._authorize(tx, actor, "users.reset_2fa", tenant)
            self._member(tx, tenant, u["id"])
            if not u["mfa_enabled"]:
                raise AdminError(f"{u['id']} has no second factor to invalidate")
            tx.update("users", {"id": u["id"]}, mfa_enabled=False)
            tx.audit(
                actor,
                "user.reset_2fa",
                "user",
                u["id"],
                {"mfa_enabled": True},
                {"mfa_enabled": False},
            )
        return Result(tx.revision, f"second factor of {u['id']} invalidated", {"user": u["id"]})

    def record_login(self, user: str) -> Result:
        """The application reports a successful sign-in (the exports' "last login"). Not an
        admin action: not authorized, not audited."""
        with self._tx() as tx:
            u = self._user(tx, user)
            if u["status"] != "active":
                raise AdminError(f"{u['id']} has not registered yet")
            tx.update("users", {"id": u["id"]}, last_login_at=tx.now)
        return Result(tx.revision, f"sign-in of {u['id']} recorded", {"user": u["id"]})

    def complete_password_reset(self, token: str, password: str) -> Result:
        if len(password or "") < MIN_PASSWORD:
            raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
        with self._tx() as tx:
            r = _redeemable(
                tx, "password_resets", "used_at", token, "password-reset", "password-reset link"
            )
            u = tx.get("users", id=r["user_id"])
            if u is None or u["status"] != "active":
                raise AdminError("the user of this link is not active")
            tx.update("users", {"id": u["id"]}, password_hash=hash_password(password))
            tx.update("password_resets", {"token_hash": r["token_hash"]}, used_at=tx.now)
            tx.audit(u["id"], "user.password_changed", "user", u["id"], None, None)
        return Result(tx.revision, f"password changed for {u['id']}", {"user": u["id"]})

    # subscribers ----------------------------------------------------------------------
    def add_subscriber(self, actor: str, tenant: str, email: str) -> Result:
        email = norm_email(email)
        with self._tx() as tx:
            self._authorize(tx, actor, "users.invite", tenant)
            self._tenant(tx, tenant)
            if tx.get("subscribers", tenant_id=tenant, email=email) is not None:
                raise AdminError(f"{email} is already a subscriber of {tenant}")
            tx.insert("subscribers", tenant_id=tenant, email=email, created_at=tx.now)
            tx.audit(actor, "subscriber.add", "subscriber", email, None, {"tenant": tenant})
        return Result(tx.revision, f"{email} subscribes to {tenant} (no access)")

    def remove_subscriber(self, actor: str, tenant: str, email: str) -> Result:
        email = norm_email(email)
        with self._tx() as tx:
            self._authorize(tx, actor, "users.invite", tenant)
            if tx.delete("subscribers", tenant_id=tenant, email=email) is None:
                raise NotFound(f"{email} is not a subscriber of {tenant}")
            tx.audit(actor, "subscriber.remove", "subscriber", email, {"tenant": tenant}, None)
        return Result(tx.revision, f"{email} no longer subscribes to {tenant}")

    # roles ------------------------------------------------------------------------------
    def templates(self) -> list[dict[str, Any]]:
        return [
            {
                "id": t.slug,
                "name": t.name,
                "owner": t.owner,
                "super_admin": t.super_admin,
                "freeze_immune": t.freeze_immune,
                "cells": list(t.cells),
            }
            for t in self.config.roles.templates.values()
        ]

    def list_roles(self, actor: str, tenant: str) -> list[dict[str, Any]]:
        cfg = self.config
        self._authorize(None, actor, "roles.view", tenant)
        if cfg.roles.model == "fixed":
            return self.templates()
        out = []
        cells = self.sor.rows("role_cells")
        for r in sorted(self.sor.rows("roles", tenant_id=tenant), key=lambda r: r["id"]):
            out.append(
                {
                    "id": r["id"],
                    "name": r["name"],
                    "template": r["template"],
                    "owner": bool(r["is_owner"]),
                    "super_admin": bool(r["super_admin"]),
                    "freeze_immune": bool(r["freeze_immune"]),
                    "cells": sorted(self._cell_text(c) for c in cells if c["role_id"] == r["id"]),
                }
            )
        return out

    def _cell_text(self, c: dict[str, Any]) -> str:
        pat = self.config.roles.cell_relation
        pre, _, post = pat.partition("{cell}")
        rel = str(c["relation"])
        if rel.startswith(pre) and rel.endswith(post):
            rel = rel[len(pre) : len(rel) - len(post) if post else None]
        return f"{c['object_type']}:{c['object_id']}#{rel}"

    def _need_tenant_roles(self) -> None:
        if self.config.roles.model != "tenant":
            names = ", ".join(t.name for t in self.config.roles.templates.values())
            raise AdminError(
                f"{self.config.product} has fixed roles ({names}): they cannot be edited"
            )

    def _parse_cell(self, tx: WriteTx, tenant: str, spec: str) -> dict[str, str]:
        cfg = self.config
        text = spec.strip()
        if "#" in text:
            obj, _, cell = text.rpartition("#")
            otype, _, oid = obj.partition(":")
        else:
            otype, oid, cell = cfg.tenant_type, tenant, text
        if not otype or not oid or not cell:
            raise AdminError(f"cell {spec!r}: expected CELL or TYPE:ID#CELL")
        relation = cfg.roles.cell_relation.format(cell=cell)
        try:
            cfg.bundle.schema.check_tuple(otype, relation, "role", "member", False)
        except SchemaError:
            raise AdminError(f"cell {spec!r}: {otype} has no permission cell {cell!r}") from None
        if otype == cfg.tenant_type:
            if oid != tenant:
                raise AdminError(f"cell {spec!r}: a role of {tenant} holds cells of {tenant} only")
        elif tx.get("resources", type=otype, id=oid) is None:
            raise AdminError(f"cell {spec!r}: no {otype} {oid!r}")
        elif self._resource_tenant(tx, otype, oid) not in (tenant, ""):
            raise AdminError(f"cell {spec!r}: {otype}:{oid} is not in {tenant}")
        return {"object_type": otype, "object_id": oid, "relation": relation}

    def _editable_role(self, tx: WriteTx, role: str) -> dict[str, Any]:
        row = self._role_row(tx, role)
        if row["is_owner"]:
            raise AdminError(f"refused: {role} is the default Owner role: it cannot be changed")
        return row

    def create_role(
        self,
        actor: str,
        tenant: str,
        name: str,
        *,
        template: str | None = None,
        cells: Sequence[str] = (),
        super_admin: bool = False,
        freeze_immune: bool = False,
    ) -> Result:
        cfg = self.config
        self._need_tenant_roles()
        self._check_flags(super_admin=super_admin, freeze_immune=freeze_immune)
        slug = slugify(name)
        with self._tx() as tx:
            self._authorize(tx, actor, "roles.create", tenant)
            self._tenant(tx, tenant)
            rid = cfg.role_id(tenant, slug)
            if tx.get("roles", id=rid) is not None:
                raise AdminError(f"role {rid} already exists")
            specs = list(cells)
            tpl = None
            if template:
                tpl = cfg.roles.templates.get(template) or next(
                    (t for t in cfg.roles.templates.values() if t.name.lower() == template.lower()),
                    None,
                )
                if tpl is None:
                    raise AdminError(f"unknown template {template!r}")
                if tpl.owner:
                    raise AdminError("refused: the Owner role exists once per tenant")
                specs = list(tpl.cells) + specs
                super_admin = super_admin or tpl.super_admin
                freeze_immune = freeze_immune or tpl.freeze_immune
            parsed = [self._parse_cell(tx, tenant, s) for s in specs]
            tx.insert(
                "roles",
                id=rid,
                tenant_id=tenant,
                name=name.strip(),
                template=tpl.slug if tpl else "",
                super_admin=super_admin,
                freeze_immune=freeze_immune,
            )
            for c in {tuple(sorted(p.items())): p for p in parsed}.values():
                tx.insert("role_cells", role_id=rid, **c)
            tx.audit(
                actor,
                "role.create",
                "role",
                rid,
                None,
                {
                    "name": name,
                    "template": tpl.slug if tpl else "",
                    "cells": specs,
                    "super_admin": super_admin,
                    "freeze_immune": freeze_immune,
                },
            )
        return Result(tx.revision, f"created role {rid}", {"role": rid})

    def _check_flags(self, **flags: bool | None) -> None:
        for k, v in flags.items():
            if v and k not in self.config.roles.flags:
                raise AdminError(f"{self.config.product} roles have no {k} flag")

    def _role_tenant(self, row: dict[str, Any]) -> str:
        return str(row["tenant_id"])

    def edit_role(
        self,
        actor: str,
        role: str,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        name: str | None = None,
        super_admin: bool | None = None,
        freeze_immune: bool | None = None,
    ) -> Result:
        """Change a role's cells (any section, including per report and per field), its
        name or its flags. The Owner role cannot be changed."""
        self._need_tenant_roles()
        self._check_flags(super_admin=super_admin, freeze_immune=freeze_immune)
        if not (add or remove or name or super_admin is not None or freeze_immune is not None):
            raise AdminError("nothing to change")
        with self._tx() as tx:
            row = self._editable_role(tx, role)
            tenant = self._role_tenant(row)
            self._authorize(tx, actor, "roles.edit", tenant)
            before = {
                "name": row["name"],
                "super_admin": row["super_admin"],
                "freeze_immune": row["freeze_immune"],
            }
            with self._guarded(tx, [tenant]):
                for s in remove:
                    c = self._parse_cell(tx, tenant, s)
                    if tx.delete("role_cells", role_id=role, **c) is None:
                        raise AdminError(f"{role} does not hold {s}")
                for s in add:
                    c = self._parse_cell(tx, tenant, s)
                    if tx.get("role_cells", role_id=role, **c) is None:
                        tx.insert("role_cells", role_id=role, **c)
                changes: dict[str, Any] = {}
                if name:
                    changes["name"] = name.strip()
                if super_admin is not None:
                    changes["super_admin"] = super_admin
                if freeze_immune is not None:
                    changes["freeze_immune"] = freeze_immune
                if changes:
                    tx.update("roles", {"id": role}, **changes)
            tx.audit(
                actor,
                "role.edit",
                "role",
                role,
                before,
                {**changes, "add": list(add), "remove": list(remove)},
            )
        return Result(tx.revision, f"updated role {role}", {"role": role})

    def delete_role(self, actor: str, role: str) -> Result:
        self._need_tenant_roles()
        with self._tx() as tx:
            row = self._editable_role(tx, role)
            tenant = self._role_tenant(row)
            self._authorize(tx, actor, "roles.delete", tenant)
            with self._guarded(tx, [tenant]):
                holders = tx.delete_where("role_bindings", role_id=role)
                cells = tx.delete_where("role_cells", role_id=role)
                tx.delete("roles", id=role)
            tx.audit(
                actor,
                "role.delete",
                "role",
                role,
                {
                    "name": row["name"],
                    "holders": sorted(h["subject_id"] for h in holders),
                    "cells": sorted(self._cell_text(c) for c in cells),
                },
                None,
            )
        return Result(tx.revision, f"deleted role {role}", {"role": role})

    def assign_role(self, actor: str, tenant: str, user: str, role: str) -> Result:
        """Give a member a role in `tenant` (a child company too). With a single-role
        product this replaces their role there."""
        with self._tx() as tx:
            self._authorize(tx, actor, "roles.assign", tenant)
            u = self._user(tx, user)
            uid = u["id"]
            self._member(tx, tenant, uid)
            rid = self._resolve_role(tx, tenant, role)
            before = self._roles_of(tx, tenant, uid)
            if rid in before and (not self.config.roles.single or before == [rid]):
                raise AdminError(f"{uid} already holds {rid} in {tenant}")
            with self._guarded(tx, [tenant]):
                self._bind(tx, tenant, uid, rid)
            tx.audit(
                actor,
                "role.assign",
                "user",
                uid,
                {"tenant": tenant, "roles": before},
                {"tenant": tenant, "roles": self._roles_of(tx, tenant, uid)},
            )
        return Result(tx.revision, f"{uid} holds {rid} in {tenant}", {"user": uid, "role": rid})

    def unassign_role(self, actor: str, tenant: str, user: str, role: str) -> Result:
        with self._tx() as tx:
            self._authorize(tx, actor, "roles.assign", tenant)
            u = self._user(tx, user)
            uid = u["id"]
            rid = self._resolve_role(tx, tenant, role)
            before = self._roles_of(tx, tenant, uid)
            with self._guarded(tx, [tenant]):
                if not self._unbind(tx, tenant, uid, rid):
                    raise AdminError(f"{uid} does not hold {rid} in {tenant}")
            tx.audit(
                actor,
                "role.unassign",
                "user",
                uid,
                {"tenant": tenant, "roles": before},
                {"tenant": tenant, "roles": self._roles_of(tx, tenant, uid)},
            )
        return Result(tx.revision, f"{uid} no longer holds {rid} in {tenant}", {"user": uid})

    # groups and teams -------------------------------------------------------------------
    def _groups(self) -> Any:
        g = self.config.groups
        if g is None:
            raise AdminError(f"{self.config.product} has no groups")
        return g

    def _group_row(self, tx: WriteTx, group: str, tenant: str | None = None) -> dict[str, Any]:
        g = self._groups()
        row = tx.get("groups", id=group)
        if row is None and tenant is not None:
            row = tx.get("groups", id=self.config.group_id(tenant, group))
        if row is None or row["kind"] != g.kind:
            raise NotFound(f"no {g.kind} {group!r}")
        return row

    def create_group(self, actor: str, tenant: str, name: str) -> Result:
        g = self._groups()
        slug = slugify(name)
        with self._tx() as tx:
            self._authorize(tx, actor, "groups.create", tenant)
            self._tenant(tx, tenant)
            gid = self.config.group_id(tenant, slug)
            if tx.get("groups", id=gid) is not None:
                raise AdminError(f"{g.kind} {gid} already exists")
            tx.insert("groups", id=gid, tenant_id=tenant, kind=g.kind, name=name.strip())
            tx.audit(actor, f"{g.kind}.create", g.kind, gid, None, {"name": name, "tenant": tenant})
        return Result(tx.revision, f"created {g.kind} {gid}", {"group": gid})

    def _not_default(self, row: dict[str, Any], what: str) -> None:
        if row["is_default"]:
            raise AdminError(
                f"refused: {row['id']} is the default {row['kind']} of everyone: "
                f"it cannot be {what}"
            )

    def rename_group(self, actor: str, tenant: str, group: str, name: str) -> Result:
        if not name.strip():
            raise AdminError("a name is required")
        with self._tx() as tx:
            row = self._group_row(tx, group, tenant)
            self._not_default(row, "renamed")
            self._authorize(tx, actor, "groups.edit", row["tenant_id"])
            tx.update("groups", {"id": row["id"]}, name=name.strip())
            tx.audit(
                actor,
                f"{row['kind']}.rename",
                row["kind"],
                row["id"],
                {"name": row["name"]},
                {"name": name.strip()},
            )
        return Result(tx.revision, f"renamed {row['id']}", {"group": row["id"]})

    def delete_group(self, actor: str, tenant: str, group: str) -> Result:
        g = self._groups()
        with self._tx() as tx:
            row = self._group_row(tx, group, tenant)
            self._not_default(row, "deleted")
            gid = row["id"]
            self._authorize(tx, actor, "groups.delete", row["tenant_id"])
            with self._guarded(tx, [row["tenant_id"]]):
                members = tx.delete_where("group_members", group_id=gid)
                parents = tx.delete_where("group_members", member_type=g.nested_type, member_id=gid)
                grants = tx.delete_where("access_grants", subject_type=g.kind, subject_id=gid)
                grants += tx.delete_where(
                    "access_grants", subject_type=g.nested_type, subject_id=gid
                )
                assigned = tx.delete_where("assignments", assignee_type=g.kind, assignee_id=gid)
                roles = tx.delete_where("role_bindings", subject_type=g.kind, subject_id=gid)
                tx.delete("groups", id=gid)
            tx.audit(
                actor,
                f"{g.kind}.delete",
                g.kind,
                gid,
                {
                    "name": row["name"],
                    "members": [f"{m['member_type']}:{m['member_id']}" for m in members],
                    "in": [p["group_id"] for p in parents],
                    "grants": len(grants),
                    "assignments": len(assigned),
                    "roles": [r["role_id"] for r in roles],
                },
                None,
            )
        return Result(tx.revision, f"deleted {g.kind} {gid}", {"group": gid})

    def _member_key(self, tx: WriteTx, tenant: str, member: str) -> tuple[str, str]:
        """'user:ID' / 'group:ID' (or a bare user id) -> (member_type, member_id)."""
        g = self._groups()
        mtype, sep, mid = member.partition(":")
        if not sep:
            mtype, mid = "user", member
        if mtype == "user":
            u = self._user(tx, mid)
            self._member(tx, tenant, u["id"])
            return "user", u["id"]
        if mtype in ("group", "team", g.kind, g.nested_type):
            row = self._group_row(tx, mid, tenant)
            if row["tenant_id"] != tenant:
                raise AdminError(f"{row['id']} is not in {tenant}")
            return g.nested_type, row["id"]
        raise AdminError(f"member {member!r}: expected user:ID or {g.kind}:ID")

    def _nested_in(self, tx: WriteTx, inner: str, outer: str) -> bool:
        """Is `outer` reachable from `inner` by nesting (inner is, transitively, inside)?"""
        g = self._groups()
        seen, todo = set(), [inner]
        while todo:
            cur = todo.pop()
            if cur == outer:
                return True
            if cur in seen:
                continue
            seen.add(cur)
            todo += [
                r["group_id"]
                for r in tx.select("group_members", member_type=g.nested_type, member_id=cur)
            ]
        return False

    def add_member(self, actor: str, tenant: str, group: str, member: str) -> Result:
        g = self._groups()
        cfg = self.config
        with self._tx() as tx:
            row = self._group_row(tx, group, tenant)
            if row["tenant_id"] != tenant:
                raise AdminError(f"{row['id']} is not in {tenant}")
            if row["is_default"]:
                raise AdminError(f"{row['id']} contains everyone of {tenant} automatically")
            self._authorize(tx, actor, "groups.edit", tenant)
            mtype, mid = self._member_key(tx, tenant, member)
            if mtype != "user" and (mid == row["id"] or self._nested_in(tx, row["id"], mid)):
                raise AdminError(f"refused: nesting {mid} in {row['id']} would make a cycle")
            if mtype == "user" and g.no_agency_managers_in_children and cfg.agency_role:
                t = self._tenant(tx, tenant)
                if t["parent_id"] and any(
                    tx.get(
                        "role_bindings",
                        role_id=cfg.agency_role,
                        subject_type="user",
                        subject_id=mid,
                        scope_type=cfg.tenant_type,
                        scope_id=c,
                    )
                    for c in self._chain(tx, tenant)[1:]
                ):
                    raise AdminError(
                        f"refused: {mid} is an agency manager: agency managers cannot "
                        "join groups of child companies"
                    )
            key = {"group_id": row["id"], "member_type": mtype, "member_id": mid}
            if tx.get("group_members", **key) is not None:
                raise AdminError(f"{mid} is already in {row['id']}")
            tx.insert("group_members", **key)
            ttype, tid = ("user", mid) if mtype == "user" else (g.kind, str(row["id"]))
            tx.audit(
                actor,
                f"{g.kind}.add_member",
                ttype,
                tid,
                None,
                {"group": row["id"], "member": f"{mtype}:{mid}"},
            )
        return Result(tx.revision, f"{mid} is in {row['id']}", {"group": row["id"]})

    def remove_member(self, actor: str, tenant: str, group: str, member: str) -> Result:
        g = self._groups()
        with self._tx() as tx:
            row = self._group_row(tx, group, tenant)
            if row["is_default"]:
                raise AdminError(f"{row['id']} contains everyone of {tenant}: no one can leave it")
            self._authorize(tx, actor, "groups.edit", row["tenant_id"])
            mtype, _, mid = member.partition(":")
            if not mid:
                mtype, mid = "user", member
            if mtype != "user":
                mtype = g.nested_type
            else:
                mid = self._user(tx, mid)["id"]
            with self._guarded(tx, [row["tenant_id"]]):
                key = {"group_id": row["id"], "member_type": mtype, "member_id": mid}
                if tx.delete("group_members", **key) is None:
                    raise AdminError(f"{mid} is not in {row['id']}")
            ttype, tid = ("user", mid) if mtype == "user" else (g.kind, str(row["id"]))
            tx.audit(
                actor,
                f"{g.kind}.remove_member",
                ttype,
                tid,
                {"group": row["id"], "member": f"{mtype}:{mid}"},
                None,
            )
        return Result(tx.revision, f"{mid} left {row['id']}", {"group": row["id"]})

    # access -------------------------------------------------------------------------------
    def _access(self) -> Any:
        a = self.config.access
        if a is None:
            raise AdminError(f"{self.config.product} has no access levels")
        return a

    def _access_subject(self, tx: WriteTx, tenant: str, subject: str) -> tuple[str, str]:
        a = self._access()
        stype, sep, sid = subject.partition(":")
        if not sep:
            stype, sid = "user", subject
        stored = a.subjects.get(stype)
        if stored is None:
            raise AdminError(f"subject {subject!r}: expected one of {', '.join(a.subjects)}:ID")
        if stype == "user":
            u = self._user(tx, sid)
            self._member(tx, tenant, u["id"])
            return stored, u["id"]
        row = self._group_row(tx, sid, tenant)
        if row["tenant_id"] != tenant:
            raise AdminError(f"{row['id']} is not in {tenant}")
        return stored, row["id"]

    def _access_target(self, tx: WriteTx, tenant: str, resource: str) -> str:
        a = self._access()
        r = resource.strip()
        if r.lower() in ("*", "all", f"all {a.resource_type}s", f"all_{a.resource_type}s"):
            if not a.all:
                raise AdminError(f"{self.config.product} has no grants on all {a.resource_type}s")
            return ""
        if r.startswith(f"{a.resource_type}:"):
            r = r.split(":", 1)[1]
        if tx.get("resources", type=a.resource_type, id=r) is None:
            raise NotFound(f"no {a.resource_type} {r!r}")
        if self._resource_tenant(tx, a.resource_type, r) != tenant:
            raise AdminError(f"{a.resource_type} {r} is not in {tenant}")
        return r

    def _existing_grants(
        self, tx: WriteTx, tenant: str, stype: str, sid: str, rid: str
    ) -> list[dict[str, Any]]:
        a = self._access()
        rows = tx.select(
            "access_grants",
            subject_type=stype,
            subject_id=sid,
            resource_type=a.resource_type,
            resource_id=rid,
        )
        return [g for g in rows if g["tenant_id"] == tenant or (rid and g["tenant_id"] == "")]

    def grant(self, actor: str, tenant: str, subject: str, level: str, resource: str) -> Result:
        """Give a user or group an access level (View/Edit) on one resource or on all of
        them (covers ones created later). Replaces the subject's level there."""
        a = self._access()
        stored = None
        for label, lv in a.levels.items():
            if level.strip().lower() in (label.lower(), lv.lower()):
                stored = lv
        if stored is None:
            raise AdminError(f"unknown access level {level!r}: one of {', '.join(a.levels)}")
        with self._tx() as tx:
            self._authorize(tx, actor, "access.manage", tenant)
            stype, sid = self._access_subject(tx, tenant, subject)
            rid = self._access_target(tx, tenant, resource)
            old = self._existing_grants(tx, tenant, stype, sid, rid)
            if [g["level"] for g in old] == [stored]:
                raise AdminError(f"{stype}:{sid} already has {level} there")
            for g in old:
                tx.delete("access_grants", **g)
            tx.insert(
                "access_grants",
                subject_type=stype,
                subject_id=sid,
                level=stored,
                resource_type=a.resource_type,
                resource_id=rid,
                tenant_id=tenant,
            )
            what = rid or f"all {a.resource_type}s"
            tx.audit(
                actor,
                "access.grant",
                stype,
                sid,
                {"levels": [g["level"] for g in old], "resource": what},
                {"level": stored, "resource": what, "tenant": tenant},
            )
        return Result(tx.revision, f"{stype}:{sid} has {level} on {what}")

    def revoke(self, actor: str, tenant: str, subject: str, resource: str) -> Result:
        with self._tx() as tx:
            self._authorize(tx, actor, "access.manage", tenant)
            stype, sid = self._access_subject(tx, tenant, subject)
            rid = self._access_target(tx, tenant, resource)
            old = self._existing_grants(tx, tenant, stype, sid, rid)
            if not old:
                raise AdminError(f"{stype}:{sid} has no access level there")
            for g in old:
                tx.delete("access_grants", **g)
            what = rid or f"all {self._access().resource_type}s"
            tx.audit(
                actor,
                "access.revoke",
                stype,
                sid,
                {"levels": [g["level"] for g in old], "resource": what},
                None,
            )
        return Result(tx.revision, f"revoked: {stype}:{sid} has no access level on {what} now")

    def _assign(
        self,
        actor: str,
        tenant: str,
        kind: str,
        resource: str,
        assignee: str,
        on: bool,
    ) -> Result:
        cfg = self.config
        spec = cfg.datasets if kind == "datasets" else cfg.tasks
        if spec is None:
            raise AdminError(f"{cfg.product} has no {kind}")
        rid = (
            resource.split(":", 1)[1] if resource.startswith(spec.resource_type + ":") else resource
        )
        action = "datasets.assign" if kind == "datasets" else "tasks.assign"
        with self._tx() as tx:
            self._authorize(tx, actor, action, tenant, **{spec.resource_type: rid})
            if tx.get("resources", type=spec.resource_type, id=rid) is None:
                raise NotFound(f"no {spec.resource_type} {rid!r}")
            if self._resource_tenant(tx, spec.resource_type, rid) != tenant:
                raise AdminError(f"{spec.resource_type} {rid} is not in {tenant}")
            if spec.assignee_type == "user":
                aid = self._user(tx, assignee.removeprefix("user:"))["id"]
                self._member(tx, tenant, aid)
            else:
                aid = self._group_row(tx, assignee.split(":", 1)[-1], tenant)["id"]
            key = {
                "resource_type": spec.resource_type,
                "resource_id": rid,
                "assignee_type": spec.assignee_type,
                "assignee_id": aid,
            }
            old = tx.select("assignments", resource_type=spec.resource_type, resource_id=rid)
            if on:
                if tx.get("assignments", **key) is not None:
                    raise AdminError(f"{rid} is already assigned to {aid}")
                if spec.assignee_type == "user":  # one assignee: a new one replaces the old
                    for o in old:
                        tx.delete("assignments", **o)
                tx.insert("assignments", **key)
            elif tx.delete("assignments", **key) is None:
                raise AdminError(f"{rid} is not assigned to {aid}")
            tx.audit(
                actor,
                f"{spec.resource_type}.{'assign' if on else 'unassign'}",
                spec.resource_type,
                rid,
                {"assignees": [o["assignee_id"] for o in old]},
                {"assignee": aid} if on else None,
            )
        verb = "assigned to" if on else "no longer assigned to"
        return Result(tx.revision, f"{spec.resource_type} {rid} {verb} {aid}")

    def assign_dataset(self, actor: str, tenant: str, dataset: str, team: str) -> Result:
        return self._assign(actor, tenant, "datasets", dataset, team, True)

    def unassign_dataset(self, actor: str, tenant: str, dataset: str, team: str) -> Result:
        return self._assign(actor, tenant, "datasets", dataset, team, False)

    def assign_task(self, actor: str, tenant: str, task: str, user: str) -> Result:
        return self._assign(actor, tenant, "tasks", task, user, True)

    def unassign_task(self, actor: str, tenant: str, task: str, user: str) -> Result:
        return self._assign(actor, tenant, "tasks", task, user, False)

    # tenants ------------------------------------------------------------------------------
    def create_tenant(
        self, actor: str, tenant: str, name: str = "", parent: str | None = None
    ) -> Result:
        """Create a tenant. A top-level tenant is a sign-up: its creator becomes its owner
        (the creator role). A child company needs tenants.create_child on the parent."""
        cfg = self.config
        if not _SLUG_RE.fullmatch(tenant or ""):
            raise AdminError(f"tenant id {tenant!r}: lower-case letters, digits, _ and -")
        with self._tx() as tx:
            if parent:
                if not cfg.children:
                    raise AdminError(f"{cfg.product} has no child tenants")
                self._tenant(tx, parent)
                self._authorize(tx, actor, "tenants.create_child", parent)
            else:
                u = tx.get("users", id=actor)
                if u is None or u["status"] != "active":
                    raise Denied(f"refused: {actor!r} is not an active user")
            if tx.get("tenants", id=tenant) is not None:
                raise AdminError(f"tenant {tenant} already exists")
            tx.insert(
                "tenants",
                id=tenant,
                kind=cfg.tenant_kind,
                name=name or tenant,
                parent_id=parent or "",
                created_at=tx.now,
            )
            for env in cfg.environments:
                tx.insert("environments", tenant_id=tenant, name=env)
            made = self._seed_tenant(tx, tenant)
            if not parent:
                tx.insert("memberships", tenant_id=tenant, user_id=actor, joined_at=tx.now)
                if cfg.roles.creator:
                    rid = (
                        cfg.roles.creator
                        if cfg.roles.model == "fixed"
                        else cfg.role_id(tenant, cfg.roles.creator)
                    )
                    self._bind(tx, tenant, actor, rid)
            tx.audit(
                actor,
                "tenant.create",
                "tenant",
                tenant,
                None,
                {"name": name or tenant, "parent": parent or "", "created": made},
            )
        return Result(tx.revision, f"created {cfg.tenant_type} {tenant}", {"tenant": tenant})

    def _seed_tenant(self, tx: WriteTx, tenant: str) -> list[str]:
        """The tenant's default objects: the Owner / creator roles and the default team."""
        cfg = self.config
        made = []
        if cfg.roles.model == "tenant":
            for t in cfg.roles.templates.values():
                if not (t.owner or t.slug == cfg.roles.creator):
                    continue
                rid = cfg.role_id(tenant, t.slug)
                tx.insert(
                    "roles",
                    id=rid,
                    tenant_id=tenant,
                    name=t.name,
                    template=t.slug,
                    is_owner=t.owner,
                    super_admin=t.super_admin and "super_admin" in cfg.roles.flags,
                    freeze_immune=t.freeze_immune and "freeze_immune" in cfg.roles.flags,
                )
                for c in t.cells:
                    tx.insert("role_cells", role_id=rid, **self._parse_cell(tx, tenant, c))
                made.append(rid)
        g = cfg.groups
        if g is not None and g.default_slug:
            gid = cfg.group_id(tenant, g.default_slug)
            tx.insert(
                "groups",
                id=gid,
                tenant_id=tenant,
                kind=g.kind,
                name=g.default_name,
                is_default=True,
            )
            made.append(gid)
        return made

    def set_auto_join(self, actor: str, tenant: str, domain: str) -> Result:
        d = domain.strip().lower().lstrip("@")
        if d and not re.fullmatch(r"[a-z0-9\-]+(\.[a-z0-9\-]+)+", d):
            raise AdminError(f"{domain!r} is not an e-mail domain")
        with self._tx() as tx:
            self._authorize(tx, actor, "tenants.manage", tenant)
            t = self._tenant(tx, tenant)
            if t["auto_join_domain"] == d:
                raise AdminError("nothing to change")
            tx.update("tenants", {"id": tenant}, auto_join_domain=d)
            tx.audit(
                actor,
                "tenant.auto_join",
                "tenant",
                tenant,
                {"domain": t["auto_join_domain"]},
                {"domain": d},
            )
        return Result(tx.revision, f"{tenant}: auto-join domain {d or '(none)'}")

    def set_agency_manager(self, actor: str, tenant: str, user: str, on: bool = True) -> Result:
        """Make a member of a parent company its agency manager (admin-level there and in
        every current and future child), or stop it."""
        cfg = self.config
        if not cfg.agency_role:
            raise AdminError(f"{cfg.product} has no agency managers")
        with self._tx() as tx:
            self._authorize(tx, actor, "tenants.manage", tenant)
            u = self._user(tx, user)
            uid = u["id"]
            self._member(tx, tenant, uid)
            key = {
                "role_id": cfg.agency_role,
                "subject_type": "user",
                "subject_id": uid,
                "scope_type": cfg.tenant_type,
                "scope_id": tenant,
            }
            have = tx.get("role_bindings", **key) is not None
            if have == on:
                raise AdminError(
                    f"{uid} is {'already' if on else 'not'} an agency manager of {tenant}"
                )
            affected = [tenant] + [t["id"] for t in tx.select("tenants", parent_id=tenant)]
            with self._guarded(tx, affected):
                if on:
                    tx.insert("role_bindings", **key)
                    if cfg.agency_user_type:
                        tx.update("users", {"id": uid}, user_type=cfg.agency_user_type)
                else:
                    tx.delete("role_bindings", **key)
            tx.audit(
                actor,
                "user.agency_manager",
                "user",
                uid,
                {"tenant": tenant, "agency_manager": have},
                {"tenant": tenant, "agency_manager": on},
            )
        return Result(
            tx.revision, f"{uid} {'is' if on else 'is no longer'} agency manager of {tenant}"
        )


ProgressFn = Callable[[int, int], None]
