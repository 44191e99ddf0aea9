"""A product's admin description: `admin.yaml` in its bundle (docs/admin.md).

It says which gatehouse permission on which resource authorizes each admin action, how the
product's roles, groups and access levels are stored in the system of record, and which role
ids are templates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gatehouse.bundle.loader import Bundle
from gatehouse.sync.mapping import TupleMapping, parse_mapping


class AdminError(ValueError):
    """Bad input or a refused change: a clear message, nothing written."""


class ConfigError(AdminError):
    pass


# Every action the admin layer authorizes; admin.yaml maps each one the product supports.
ACTIONS = (
    "users.view",
    "users.invite",
    "users.edit",
    "users.reset_2fa",
    "users.freeze",
    "users.delete",
    "roles.view",
    "roles.create",
    "roles.edit",
    "roles.delete",
    "roles.assign",
    "groups.create",
    "groups.edit",
    "groups.delete",
    "access.manage",
    "datasets.assign",
    "tasks.assign",
    "tenants.manage",
    "tenants.create_child",
    "permissions.preview",
)


@dataclass(frozen=True)
class ActionRule:
    permission: str
    resource: str  # template: {tenant_type}, {tenant} and action-specific fields


@dataclass(frozen=True)
class Template:
    slug: str
    name: str
    cells: tuple[str, ...] = ()
    owner: bool = False
    super_admin: bool = False
    freeze_immune: bool = False


@dataclass(frozen=True)
class RolesConfig:
    model: str  # fixed | tenant
    templates: dict[str, Template]
    single: bool = False
    id: str = "{slug}"
    cell_relation: str = "grant_{cell}"
    flags: tuple[str, ...] = ()
    default: str | None = None
    creator: str | None = None
    guard: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupsConfig:
    kind: str
    id: str
    nested_type: str
    default_slug: str | None = None
    default_name: str = ""
    no_agency_managers_in_children: bool = False


@dataclass(frozen=True)
class AccessConfig:
    resource_type: str
    levels: dict[str, str]  # label -> stored level, least to most permissive
    subjects: dict[str, str]  # CLI subject type -> access_grants.subject_type
    all: bool = False


@dataclass(frozen=True)
class AssignConfig:
    resource_type: str
    assignee_type: str


@dataclass
class AdminConfig:
    product: str
    tenant_type: str
    tenant_kind: str
    roles: RolesConfig
    actions: dict[str, ActionRule]
    mapping: TupleMapping
    bundle: Bundle
    link_base: str = "https://example.invalid/invitation/"
    invitation_days: int = 7
    require_2fa: bool = False
    environments: tuple[str, ...] = ()
    user_types: tuple[str, ...] = ("standard",)
    children: bool = False
    freeze: bool = False
    agency_role: str | None = None
    agency_user_type: str | None = None
    groups: GroupsConfig | None = None
    access: AccessConfig | None = None
    datasets: AssignConfig | None = None
    tasks: AssignConfig | None = None
    preview_tenant: tuple[str, ...] = ()
    preview_resources: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def tenant_ref(self, tenant: str) -> str:
        return f"{self.tenant_type}:{tenant}"

    def role_id(self, tenant: str, slug: str) -> str:
        return self.roles.id.format(tenant=tenant, slug=slug)

    def group_id(self, tenant: str, slug: str) -> str:
        if self.groups is None:
            raise AdminError(f"{self.product} has no groups")
        return self.groups.id.format(tenant=tenant, slug=slug)


def _req(doc: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise ConfigError(f"{where}: missing {key!r}")
    return doc[key]


def _strs(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(v)


def parse_config(text: str, bundle: Bundle, mapping: TupleMapping) -> AdminConfig:
    src = "admin.yaml"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not YAML: {e}") from e
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ConfigError(f"{src}: expected a mapping with version: 1")
    tenant = _req(doc, "tenant", src)
    ttype = str(_req(tenant, "type", f"{src}: tenant"))
    if not bundle.schema.has_type(ttype):
        raise ConfigError(f"{src}: tenant type {ttype!r} is not in the schema")
    r = _req(doc, "roles", src)
    model = r.get("model")
    if model not in ("fixed", "tenant"):
        raise ConfigError(f"{src}: roles.model must be fixed or tenant")
    templates: dict[str, Template] = {}
    for slug, t in (r.get("templates") or {}).items():
        t = t or {}
        templates[str(slug)] = Template(
            slug=str(slug),
            name=str(t.get("name", slug)),
            cells=_strs(t.get("cells"), f"{src}: roles.templates.{slug}.cells"),
            owner=bool(t.get("owner", False)),
            super_admin=bool(t.get("super_admin", False)),
            freeze_immune=bool(t.get("freeze_immune", False)),
        )
    roles = RolesConfig(
        model=model,
        templates=templates,
        single=bool(r.get("single", False)),
        id=str(r.get("id", "{slug}")),
        cell_relation=str(r.get("cell_relation", "grant_{cell}")),
        flags=_strs(r.get("flags"), f"{src}: roles.flags"),
        default=r.get("default"),
        creator=r.get("creator"),
        guard=_strs(r.get("guard"), f"{src}: roles.guard"),
    )
    for name in (roles.default, roles.creator):
        if name is not None and name not in templates:
            raise ConfigError(f"{src}: roles: {name!r} is not a template")
    bad_flags = set(roles.flags) - {"super_admin", "freeze_immune"}
    if bad_flags:
        raise ConfigError(f"{src}: roles.flags: unknown {sorted(bad_flags)}")
    actions: dict[str, ActionRule] = {}
    for name, spec in (doc.get("actions") or {}).items():
        if name not in ACTIONS:
            raise ConfigError(f"{src}: actions: unknown action {name!r}")
        if isinstance(spec, str):
            rule = ActionRule(spec, "{tenant_type}:{tenant}")
        elif isinstance(spec, dict) and isinstance(spec.get("permission"), str):
            rule = ActionRule(
                spec["permission"], str(spec.get("resource", "{tenant_type}:{tenant}"))
            )
        else:
            raise ConfigError(f"{src}: actions.{name}: a permission or {{permission, resource}}")
        rtype = rule.resource.split(":", 1)[0]
        rtype = ttype if rtype == "{tenant_type}" else rtype
        if not bundle.schema.has_type(rtype) or bundle.schema.plan(rtype, rule.permission) is None:
            raise ConfigError(f"{src}: actions.{name}: {rtype} has no {rule.permission!r}")
        actions[name] = rule
    groups = None
    if doc.get("groups"):
        g = doc["groups"]
        default = g.get("default") or {}
        groups = GroupsConfig(
            kind=str(_req(g, "kind", f"{src}: groups")),
            id=str(g.get("id", "{slug}")),
            nested_type=str(g.get("nested_type", "group")),
            default_slug=default.get("slug"),
            default_name=str(default.get("name", "")),
            no_agency_managers_in_children=bool(g.get("no_agency_managers_in_children", False)),
        )
    access = None
    if doc.get("access"):
        a = doc["access"]
        access = AccessConfig(
            resource_type=str(_req(a, "resource_type", f"{src}: access")),
            levels={str(k): str(v) for k, v in (a.get("levels") or {}).items()},
            subjects={str(k): str(v) for k, v in (a.get("subjects") or {}).items()},
            all=bool(a.get("all", False)),
        )

    def assign(key: str) -> AssignConfig | None:
        v = doc.get(key)
        if not v:
            return None
        return AssignConfig(str(v["resource_type"]), str(v["assignee_type"]))

    agency = doc.get("agency_manager") or {}
    preview = doc.get("preview") or {}
    return AdminConfig(
        product=bundle.manifest.name,
        tenant_type=ttype,
        tenant_kind=str(tenant.get("kind", ttype)),
        roles=roles,
        actions=actions,
        mapping=mapping,
        bundle=bundle,
        link_base=str(doc.get("link_base", "https://example.invalid/invitation/")),
        invitation_days=int(doc.get("invitation_days", 7)),
        require_2fa=bool(doc.get("require_2fa", False)),
        environments=_strs(doc.get("environments"), f"{src}: environments"),
        user_types=_strs(doc.get("user_types"), f"{src}: user_types") or ("standard",),
        children=bool(doc.get("children", False)),
        freeze=bool(doc.get("freeze", False)),
        agency_role=agency.get("role_id"),
        agency_user_type=agency.get("user_type"),
        groups=groups,
        access=access,
        datasets=assign("datasets"),
        tasks=assign("tasks"),
        preview_tenant=_strs(preview.get("tenant"), f"{src}: preview.tenant"),
        preview_resources={
            str(k): _strs(v, f"{src}: preview.resources.{k}")
            for k, v in (preview.get("resources") or {}).items()
        },
    )


def load_config(bundle: Bundle) -> AdminConfig:
    """The admin description and the row mapping of a loaded bundle."""
    name = bundle.manifest.name
    mtext = bundle.files.get("mapping.yaml")
    if mtext is None:
        raise ConfigError(f"bundle {name} has no mapping.yaml")
    atext = bundle.files.get("admin.yaml")
    if atext is None:
        raise ConfigError(f"bundle {name} has no admin.yaml: it has no admin workflows")
    mapping = parse_mapping(mtext.decode("utf-8"), f"{name}/mapping.yaml")
    return parse_config(atext.decode("utf-8"), bundle, mapping)
