"""SQLAlchemy Core tables of the reference system of record (SQLite and PostgreSQL).

Domain tables hold what the five seed products need (tenants, users, groups, roles, grants,
resources ...). Keys are the application's own string ids; optional parts of a composite key
are '' rather than NULL so that the key is always complete. There are no foreign keys: the
admin layer checks references, and the sync worker must survive rows written by other
applications in any order.

change_log  one row per changed domain row (before/after images, secrets removed), stamped
            with the revision of its transaction
sor_meta    one row: the newest committed revision and the retained-log floor
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

ID = 256
SHORT = 64

# SQLite only auto-increments INTEGER PRIMARY KEY (rowid), never BIGINT.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


def _id(name: str, primary: bool = False, default: str | None = None) -> Column[str]:
    return Column(
        name,
        String(ID),
        primary_key=primary,
        nullable=False,
        server_default=default,
        default=default,
    )


def _ts(name: str, nullable: bool = True) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _flag(name: str) -> Column[bool]:
    return Column(name, Boolean, nullable=False, default=False, server_default=false())


tenants = Table(
    "tenants",
    metadata,
    _id("id", primary=True),
    Column("kind", String(SHORT), nullable=False),  # org | account | company (the bundle's type)
    Column("name", String(ID), nullable=False, default=""),
    Column("parent_id", String(ID), nullable=False, default="", server_default=""),
    Column("auto_join_domain", String(ID), nullable=False, default="", server_default=""),
    _ts("created_at"),
)

environments = Table(
    "environments",
    metadata,
    _id("tenant_id", primary=True),
    Column("name", String(SHORT), primary_key=True),
)

users = Table(
    "users",
    metadata,
    _id("id", primary=True),
    Column("email", String(ID), nullable=False, unique=True),
    Column("first_name", String(ID), nullable=False, default=""),
    Column("last_name", String(ID), nullable=False, default=""),
    Column("language", String(SHORT), nullable=False, default="en"),
    Column("phone", String(SHORT), nullable=False, default=""),
    Column("user_type", String(SHORT), nullable=False, default="standard"),
    # invited (no access until registered) | active | deleted (kept for references)
    Column("status", String(16), nullable=False, default="active"),
    Column("password_hash", String(ID), nullable=True),
    Column("mfa_enabled", Boolean, nullable=False, default=False),
    _ts("created_at"),
    _ts("last_login_at"),
)

# A user's membership of a tenant; `status` active | frozen (per tenant).
memberships = Table(
    "memberships",
    metadata,
    _id("tenant_id", primary=True),
    _id("user_id", primary=True),
    Column("status", String(16), nullable=False, default="active"),
    _ts("joined_at"),
    Index("ix_memberships_user", "user_id"),
)

# Groups and teams; `is_default` marks the undeletable All Users team.
groups = Table(
    "groups",
    metadata,
    _id("id", primary=True),
    _id("tenant_id"),
    Column("kind", String(SHORT), nullable=False, default="group"),  # group | team
    Column("name", String(ID), nullable=False, default=""),
    _flag("is_default"),
)

# member_type user | group (nesting)
group_members = Table(
    "group_members",
    metadata,
    _id("group_id", primary=True),
    Column("member_type", String(SHORT), primary_key=True),
    _id("member_id", primary=True),
    Index("ix_group_members_member", "member_type", "member_id"),
)

# Templates from the bundle have tenant_id ''; custom roles belong to a tenant.
roles = Table(
    "roles",
    metadata,
    _id("id", primary=True),
    _id("tenant_id", default=""),
    Column("name", String(ID), nullable=False, default=""),
    Column("template", String(SHORT), nullable=False, default=""),
    _flag("super_admin"),
    _flag("freeze_immune"),
    _flag("is_owner"),  # the default Owner role: cannot be changed or deleted
)

# One permission cell: the role holds `relation` on an object (area, report, field ...).
role_cells = Table(
    "role_cells",
    metadata,
    _id("role_id", primary=True),
    Column("object_type", String(SHORT), primary_key=True),
    _id("object_id", primary=True),
    Column("relation", String(SHORT), primary_key=True),
)

# A role given to a user or group, at a scope (tenant, child company ...; '' = the role's own).
role_bindings = Table(
    "role_bindings",
    metadata,
    _id("role_id", primary=True),
    Column("subject_type", String(SHORT), primary_key=True),
    _id("subject_id", primary=True),
    Column("scope_type", String(SHORT), primary_key=True, default="", server_default=""),
    _id("scope_id", primary=True, default=""),
    Index("ix_role_bindings_subject", "subject_type", "subject_id"),
)

# An access level on one resource, or ('' resource_id) on every resource of a type in a tenant.
access_grants = Table(
    "access_grants",
    metadata,
    Column("subject_type", String(SHORT), primary_key=True),
    _id("subject_id", primary=True),
    Column("level", String(SHORT), primary_key=True),
    Column("resource_type", String(SHORT), primary_key=True),
    _id("resource_id", primary=True, default=""),
    _id("tenant_id", primary=True, default=""),
)

resources = Table(
    "resources",
    metadata,
    Column("type", String(SHORT), primary_key=True),
    _id("id", primary=True),
    _id("tenant_id", default=""),
    Column("parent_type", String(SHORT), nullable=False, default="", server_default=""),
    _id("parent_id", default=""),
    _id("creator_id", default=""),
    Column("visibility", String(16), nullable=False, default="", server_default=""),
    Column("name", String(ID), nullable=False, default=""),
    Index("ix_resources_tenant", "tenant_id", "type"),
)

# Assignments of a resource to a user or team (a task's assignee, a dataset's teams).
assignments = Table(
    "assignments",
    metadata,
    Column("resource_type", String(SHORT), primary_key=True),
    _id("resource_id", primary=True),
    Column("assignee_type", String(SHORT), primary_key=True),
    _id("assignee_id", primary=True),
)

# Relationships a product keeps as plain tuples (anything the other tables do not model).
relationships = Table(
    "relationships",
    metadata,
    Column("resource_type", String(SHORT), primary_key=True),
    _id("resource_id", primary=True),
    Column("relation", String(SHORT), primary_key=True),
    Column("subject_type", String(SHORT), primary_key=True),
    _id("subject_id", primary=True),
    Column("subject_relation", String(SHORT), primary_key=True, default="", server_default=""),
)

invitations = Table(
    "invitations",
    metadata,
    Column("token_hash", String(128), primary_key=True),
    Column("email", String(ID), nullable=False),
    _id("tenant_id"),
    _id("role_id", default=""),
    _id("invited_by", default=""),
    _ts("created_at", nullable=False),
    _ts("expires_at", nullable=False),
    _ts("accepted_at"),
    Index("ix_invitations_email", "email"),
)

password_resets = Table(
    "password_resets",
    metadata,
    Column("token_hash", String(128), primary_key=True),
    _id("user_id"),
    _ts("expires_at", nullable=False),
    _ts("used_at"),
)

# E-mail only: a subscriber has no account and no access.
subscribers = Table(
    "subscribers",
    metadata,
    _id("tenant_id", primary=True),
    Column("email", String(ID), primary_key=True),
    _ts("created_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    _id("actor"),
    Column("action", String(SHORT), nullable=False),
    Column("target_type", String(SHORT), nullable=False),
    _id("target_id"),
    Column("before", Text, nullable=True),  # JSON
    Column("after", Text, nullable=True),  # JSON
    Column("revision", BigInteger, nullable=False),
    Index("ix_audit_target", "target_type", "target_id"),
)

change_log = Table(
    "change_log",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),  # order within a revision
    Column("revision", BigInteger, nullable=False),  # one per transaction, == commit order
    Column("table_name", String(SHORT), nullable=False),
    Column("op", String(10), nullable=False),  # insert | update | delete | reconcile
    Column("old", Text, nullable=True),  # JSON row image before
    Column("new", Text, nullable=True),  # JSON row image after
    _ts("committed_at", nullable=False),
    Index("ix_change_log_revision", "revision", "id"),
)

sor_meta = Table(
    "sor_meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    # The newest committed revision. Writers increment it first thing in their transaction;
    # the row lock serialises them, so revision order is commit order.
    Column("revision", BigInteger, nullable=False),
    # Revisions <= log_floor may have been pruned from change_log.
    Column("log_floor", BigInteger, nullable=False),
)

# Domain tables whose changes are captured (and may be mapped to tuples).
CAPTURED: dict[str, Table] = {
    t.name: t
    for t in (
        tenants,
        environments,
        users,
        memberships,
        groups,
        group_members,
        roles,
        role_cells,
        role_bindings,
        access_grants,
        resources,
        assignments,
        relationships,
        subscribers,
    )
}

# Never copied into the change log or the feed.
SECRET_COLUMNS = frozenset({"password_hash", "token_hash"})

# Every table an admin transaction may write.
WRITABLE: dict[str, Table] = {
    **CAPTURED,
    "invitations": invitations,
    "password_resets": password_resets,
}
