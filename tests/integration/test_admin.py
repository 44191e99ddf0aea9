"""Admin workflows of the five seed products on SQLite and PostgreSQL, authorized by the
local authorizer (the bundle's schema over the SoR's mapped rows): refusals, atomicity,
the rules of each product, bulk import, export, history and preview."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dbs import Db

from gatehouse.admin import Admin, AdminError, Denied, LocalAuthorizer, load_config
from gatehouse.admin.bulk import import_users, read_rows, write_template
from gatehouse.admin.reports import export_users, history, preview
from gatehouse.admin.seed import complete
from gatehouse.bundle.loader import load_bundle
from gatehouse.sor.fixtures import load_fixture
from gatehouse.sor.store import SystemOfRecord

ROOT = Path(__file__).resolve().parents[2]


Factory = Callable[[str], Admin]


@pytest.fixture
def product(db: Db) -> Iterator[Factory]:
    sors: list[SystemOfRecord] = []

    def make(name: str) -> Admin:
        sor = db.sor()
        sors.append(sor)
        sor.create_schema()
        bundle = load_bundle(ROOT / "bundles" / name)
        cfg = load_config(bundle)
        fixture = yaml.safe_load(bundle.files["fixture.yaml"])["relationships"]
        load_fixture(sor, cfg.mapping, fixture)
        complete(sor, cfg)
        return Admin(sor, cfg, LocalAuthorizer(sor, bundle, cfg.mapping))

    yield make
    for s in sors:
        s.close()


def allowed(admin: Admin, subject: str, permission: str, resource: str) -> bool:
    ans = admin.authz.check(subject, permission, resource, admin.sor.revision())
    assert not ans.error, ans.error
    return ans.allowed


def aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


# users -------------------------------------------------------------------------------------
def test_invitation_gives_no_access_until_accepted_with_2fa(product: Factory) -> None:
    a = product("kontomatik")
    r = a.invite("ana@acme", "acme", "ivy.new@acme.example", role="Viewer", first_name="Ivy")
    token = r.data["token"]
    assert r.data["link"].endswith(token)
    assert r.revision == a.sor.revision()
    # Stored hashed, never in clear.
    (inv,) = a.sor.rows("invitations", email="ivy.new@acme.example")
    assert inv["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert aware(inv["expires_at"]) - aware(inv["created_at"]) == dt.timedelta(days=7)
    user = "user:ivy.new@acme.example"
    assert a.sor.rows("users", id="ivy.new@acme.example")[0]["status"] == "invited"
    assert a.sor.rows("memberships", user_id="ivy.new@acme.example") == []
    assert not allowed(a, user, "view_import_data", "environment:acme/TEST")
    with pytest.raises(AdminError, match="two-factor"):
        a.accept(token, password="correct horse", mfa_enabled=False)
    done = a.accept(token, password="correct horse", mfa_enabled=True)
    assert allowed(a, user, "view_import_data", "environment:acme/TEST")
    assert not allowed(a, user, "invite_user", "account:acme")
    assert done.revision == a.sor.revision()
    with pytest.raises(AdminError, match="already been used"):
        a.accept(token, password="correct horse", mfa_enabled=True)
    (u,) = a.sor.rows("users", id="ivy.new@acme.example")
    assert u["status"] == "active" and u["password_hash"].startswith("scrypt$")
    assert "correct horse" not in json.dumps(
        [dict(r) for r in a.sor.rows("audit_log")], default=str
    )


def test_expired_invitation_is_refused(product: Factory) -> None:
    a = product("kontomatik")
    r = a.invite("ana@acme", "acme", "late@acme.example")
    with a.sor.transaction() as tx:
        (inv,) = tx.select("invitations", email="late@acme.example")
        tx.update(
            "invitations",
            {"token_hash": inv["token_hash"]},
            expires_at=tx.now - dt.timedelta(seconds=1),
        )
    with pytest.raises(AdminError, match="expired"):
        a.accept(r.data["token"], password="long enough", mfa_enabled=True)
    # A new activation link works; the old token is gone.
    r2 = a.resend_activation("ana@acme", "acme", "late@acme.example")
    with pytest.raises(AdminError, match="unknown invitation"):
        a.accept(r.data["token"], password="long enough", mfa_enabled=True)
    a.accept(r2.data["token"], password="long enough", mfa_enabled=True)
    assert allowed(a, "user:late@acme.example", "view_import_data", "account:acme")


def test_only_an_admin_may_invite_and_a_refusal_writes_nothing(product: Factory) -> None:
    a = product("kontomatik")
    before = a.sor.revision()
    with pytest.raises(Denied, match="needs invite_user on account:acme"):
        a.invite("vic@acme", "acme", "x@acme.example")
    with pytest.raises(Denied):  # multi@x is Admin of acme but only Viewer of beta
        a.invite("multi@x", "beta", "x@beta.example")
    with pytest.raises(Denied, match="not an active user"):
        a.invite("nobody", "acme", "x@acme.example")
    with pytest.raises(AdminError, match="not a valid e-mail"):
        a.invite("ana@acme", "acme", "not-an-email")
    with pytest.raises(AdminError, match="unknown role"):
        a.invite("ana@acme", "acme", "x@acme.example", role="Janitor")
    assert a.sor.revision() == before
    assert a.sor.rows("users", email="x@acme.example") == []


def test_invited_to_a_second_tenant_before_registering(product: Factory) -> None:
    a = product("kontomatik")
    r1 = a.invite("ana@acme", "acme", "two@x.example", role="Viewer")
    r2 = a.invite("bob@beta", "beta", "two@x.example", role="Technician")
    assert r1.data["user"] == r2.data["user"] == "two@x.example"
    a.accept(r1.data["token"], password="first password", mfa_enabled=True)
    with pytest.raises(AdminError, match="wrong password"):
        a.accept(r2.data["token"], password="someone else", mfa_enabled=True)
    a.accept(r2.data["token"], password="first password", mfa_enabled=True)
    assert allowed(a, "user:two@x.example", "view_import_data", "account:acme")
    assert allowed(a, "user:two@x.example", "generate_api_key", "account:beta")
    assert not allowed(a, "user:two@x.example", "view_import_data", "account:beta")


def test_add_existing_user_to_another_tenant(product: Factory) -> None:
    a = product("kontomatik")
    assert not allowed(a, "user:ted@acme", "view_api_usage", "account:beta")
    with pytest.raises(AdminError, match="already has an account"):
        a.invite("bob@beta", "beta", "ted@acme")
    a.add_to_tenant("bob@beta", "beta", "ted@acme", role="Technician")
    assert allowed(a, "user:ted@acme", "generate_api_key", "account:beta")
    assert not allowed(a, "user:ted@acme", "view_import_data", "environment:beta/TEST")
    # Still one role per account: re-roling replaces it.
    a.assign_role("bob@beta", "beta", "ted@acme", "Viewer")
    assert allowed(a, "user:ted@acme", "view_import_data", "environment:beta/TEST")
    assert not allowed(a, "user:ted@acme", "generate_api_key", "account:beta")


def test_an_account_always_keeps_an_admin(product: Factory) -> None:
    a = product("kontomatik")
    before = a.sor.revision()
    with pytest.raises(AdminError, match="without an owner or admin"):
        a.assign_role("bob@beta", "beta", "bob@beta", "Viewer")
    with pytest.raises(AdminError, match="without an owner or admin"):
        a.remove_from_tenant("bob@beta", "beta", "bob@beta")
    assert a.sor.revision() == before
    # acme has two admins: one may step down.
    a.assign_role("multi@x", "acme", "multi@x", "Viewer")
    assert not allowed(a, "user:multi@x", "invite_user", "account:acme")


def test_subscribers_get_no_access(product: Factory) -> None:
    a = product("kontomatik")
    a.add_subscriber("ana@acme", "acme", "news@acme.example")
    assert a.sor.rows("subscribers", tenant_id="acme", email="news@acme.example")
    assert a.sor.rows("users", email="news@acme.example") == []
    assert not allowed(a, "user:news@acme.example", "view_api_usage", "account:acme")
    with pytest.raises(Denied):
        a.add_subscriber("vic@acme", "acme", "other@acme.example")


def test_edit_profile_validates_and_audits(product: Factory) -> None:
    a = product("ontra")
    r = a.edit_profile("adam", "northwind", "sara", first_name="Sara", language="pt-BR")
    (u,) = a.sor.rows("users", id="sara")
    assert (u["first_name"], u["language"]) == ("Sara", "pt-BR")
    with pytest.raises(AdminError, match="language"):
        a.edit_profile("adam", "northwind", "sara", language="portuguese!")
    with pytest.raises(AdminError, match="user type"):
        a.edit_profile("adam", "northwind", "sara", user_type="wizard")
    with pytest.raises(Denied):
        a.edit_profile("finn", "northwind", "sara", first_name="X")
    a.edit_profile("finn", "northwind", "finn", phone="+44 20 7946 0000")  # one's own profile
    h = history(a, "adam", "northwind", "sara")
    assert [x["action"] for x in h] == ["user.edit"]
    assert h[0]["before"]["first_name"] == "sara" and h[0]["after"]["first_name"] == "Sara"
    assert h[0]["actor"] == "adam" and h[0]["revision"] == r.revision


def test_delete_user_is_irreversible_and_keeps_references(product: Factory) -> None:
    a = product("importers")
    assert allowed(a, "user:gina", "delete", "importer:imp_g")
    with pytest.raises(Denied):
        a.delete_user("gus", "gina")  # a guest may not delete users
    a.delete_user("umar", "gina")
    (u,) = a.sor.rows("users", id="gina")
    assert u["status"] == "deleted" and u["password_hash"] is None
    assert a.sor.rows("memberships", user_id="gina") == []
    assert a.sor.rows("role_bindings", subject_id="gina") == []
    # What gina created still says so.
    (imp,) = a.sor.rows("resources", type="importer", id="imp_g")
    assert imp["creator_id"] == "gina"
    assert not allowed(a, "user:gina", "delete", "importer:imp_g")
    assert not allowed(a, "user:gina", "contact_support", "account:datahub")
    with pytest.raises(AdminError, match="deleted"):
        a.add_to_tenant("olivia", "datahub", "gina")
    with pytest.raises(AdminError, match="deleted user"):
        a.invite("olivia", "datahub", "gina@example.com")


def test_password_reset_link_is_single_use(product: Factory) -> None:
    a = product("infosum")
    r = a.password_reset("alan", "orbit", "bea")
    (row,) = a.sor.rows("password_resets", user_id="bea")
    assert row["token_hash"] == hashlib.sha256(r.data["token"].encode()).hexdigest()
    a.complete_password_reset(r.data["token"], "a new password")
    with pytest.raises(AdminError, match="already been used"):
        a.complete_password_reset(r.data["token"], "another password")
    with pytest.raises(Denied):  # bea has no user rights
        a.password_reset("bea", "orbit", "tess")


def test_invalidate_2fa_needs_the_right_and_is_audited(product: Factory) -> None:
    a = product("infosum")
    with a.sor.transaction() as tx:
        tx.update("users", {"id": "bea"}, mfa_enabled=True)
    with pytest.raises(Denied, match="invalidate_user_2fa"):  # a Business User may not
        a.reset_2fa("carl", "orbit", "bea")
    assert a.sor.rows("users", id="bea")[0]["mfa_enabled"] is True
    r = a.reset_2fa("alan", "orbit", "bea")  # Admin holds invalidate_user_2fa
    assert a.sor.rows("users", id="bea")[0]["mfa_enabled"] is False
    (entry,) = [h for h in history(a, "alan", "orbit", "bea") if h["action"] == "user.reset_2fa"]
    assert entry["revision"] == r.revision and entry["actor"] == "alan"
    with pytest.raises(AdminError, match="no second factor"):
        a.reset_2fa("alan", "orbit", "bea")


def test_a_recorded_sign_in_shows_in_the_profile_export(product: Factory) -> None:
    a = product("ontra")
    before = export_users(a, "adam", "northwind", "profile")
    a.record_login("sara")
    after = export_users(a, "adam", "northwind", "profile")
    col = after.columns.index("last login")
    email = after.columns.index("email")

    def sara(t: Any) -> list[str]:
        return next(r for r in t.rows if r[email].startswith("sara"))

    assert sara(before)[col] == "" and sara(after)[col] != ""


# roles -------------------------------------------------------------------------------------
def test_infosum_owner_role_and_custom_roles(product: Factory) -> None:
    a = product("infosum")
    names = [t["name"] for t in a.templates()]
    assert names == ["Owner", "Admin", "Technical User", "Business User"]
    with pytest.raises(AdminError, match="Owner role"):
        a.edit_role("olga", "orbit/owner", add=["run_query"])
    with pytest.raises(AdminError, match="Owner role"):
        a.delete_role("olga", "orbit/owner")
    # olga is the only owner.
    with pytest.raises(AdminError, match="without an owner"):
        a.unassign_role("olga", "orbit", "olga", "Owner")
    a.assign_role("olga", "orbit", "alan", "Owner")
    a.unassign_role("alan", "orbit", "olga", "owner")
    assert not allowed(a, "user:olga", "delete_role", "company:orbit")
    # Custom role from a template, then edited.
    with pytest.raises(Denied):
        a.create_role("bea", "orbit", "Analysts", template="business_user")
    a.create_role("alan", "orbit", "Analysts", template="Business User")
    a.edit_role("alan", "orbit/analysts", remove=["run_query"], add=["create_importer"])
    a.assign_role("alan", "orbit", "newbie", "Analysts")
    assert allowed(a, "user:newbie", "create_report", "company:orbit")
    assert allowed(a, "user:newbie", "create_importer", "company:orbit")
    assert not allowed(a, "user:newbie", "query", "dataset:ds_all")
    with pytest.raises(AdminError, match="no permission cell"):
        a.edit_role("alan", "orbit/analysts", add=["fly"])
    a.delete_role("alan", "orbit/analysts")
    assert not allowed(a, "user:newbie", "create_report", "company:orbit")
    assert a.sor.rows("role_cells", role_id="orbit/analysts") == []


def test_fixed_roles_cannot_be_edited(product: Factory) -> None:
    a = product("importers")
    with pytest.raises(AdminError, match="fixed roles"):
        a.create_role("olivia", "datahub", "Auditor")
    # umar (user) may invite but not change roles.
    a.invite("umar", "datahub", "new@datahub.example")
    with pytest.raises(Denied, match="change_role"):
        a.assign_role("umar", "datahub", "gus", "user")


def test_aktek_role_matrix_cells_flags_and_preview(product: Factory) -> None:
    a = product("aktek")
    a.create_role(
        "sam",
        "field_a",
        "Field auditor",
        cells=["login", "report:field_a/incidents#view", "field:field_a/incidents/casualties#view"],
    )
    with pytest.raises(AdminError, match="no report"):
        a.edit_role("sam", "field_a/field_auditor", add=["report:field_a/nope#view"])
    with pytest.raises(AdminError, match="not in field_a"):
        a.edit_role("sam", "field_a/field_auditor", add=["report:field_b/incidents#view"])
    a.add_to_tenant("sam", "field_a", "bo", role="field_auditor")
    assert allowed(a, "user:bo", "view", "field:field_a/incidents/casualties")
    assert not allowed(a, "user:bo", "view", "field:field_a/incidents/location")
    a.edit_role("sam", "field_a/field_auditor", super_admin=True)
    assert allowed(a, "user:bo", "delete", "report:field_a/incidents")
    # Preview of eve on report incidents (the scenario's table).
    cells = {
        c["permission"]: c
        for c in preview(a, "sam", "field_a", "eve", resource="report:field_a/incidents")
    }
    assert cells["view"]["allowed"] and "field_a/analyst" in cells["view"]["decided_by"]
    assert "field_a/editor" in cells["view"]["decided_by"]
    assert cells["edit"]["allowed"] and cells["edit"]["decided_by"] == "role field_a/editor"
    assert not cells["delete"]["allowed"]
    assert cells["delete"]["decided_by"] == "no role or rule allows it"
    full = preview(a, "mia", "field_a", "fred")
    assert full and not any(c["allowed"] for c in full)
    assert all("company:field_a#frozen@user:fred" in c["decided_by"] for c in full)
    sam = {(c["resource"], c["permission"]): c for c in preview(a, "mia", "field_a", "sam")}
    assert "Above permissions" in sam[("company:field_a", "users_delete")]["decided_by"]
    with pytest.raises(Denied):
        preview(a, "eve", "field_a", "sam")


def test_aktek_freeze_unfreeze_and_immunity(product: Factory) -> None:
    a = product("aktek")
    before = a.sor.revision()
    with pytest.raises(AdminError, match="immune against freezing"):
        a.freeze("sam", "field_a", "hana")
    assert a.sor.revision() == before
    with pytest.raises(Denied):
        a.freeze("eve", "field_a", "ali")
    a.freeze("hana", "field_a", "eve")  # hana holds users_edit
    assert not allowed(a, "user:eve", "view", "dashboard:field_a/overview")
    a.unfreeze("sam", "field_a", "eve")
    assert allowed(a, "user:eve", "view", "dashboard:field_a/overview")


def test_preview_names_fixed_roles(product: Factory) -> None:
    a = product("kontomatik")
    cells = {c["permission"]: c for c in preview(a, "ana@acme", "acme", "ted@acme")}
    assert cells["generate_api_key"]["allowed"]
    assert cells["generate_api_key"]["decided_by"] == "role Technician (account:acme)"
    assert not cells["view_import_data"]["allowed"]
    assert cells["view_import_data"]["decided_by"] == "no role or rule allows it"
    with pytest.raises(AdminError, match="not account:acme"):
        preview(a, "ana@acme", "acme", "ted@acme", resource="account:beta")


def test_freeze_is_refused_where_the_product_has_none(product: Factory) -> None:
    a = product("ontra")
    with pytest.raises(AdminError, match="no freezing"):
        a.freeze("adam", "northwind", "sara")


def test_aktek_child_companies_agency_and_account_managers(product: Factory) -> None:
    a = product("aktek")
    with pytest.raises(Denied):
        a.create_tenant("sam", "field_c", parent="aktek_hq")
    a.create_tenant("mia", "field_c", "Field C", parent="aktek_hq")
    assert allowed(a, "user:mia", "users_create", "company:field_c")  # future children too
    a.create_role("mia", "field_c", "Reader", cells=["login"])
    a.add_to_tenant("mia", "field_c", "ali", role="reader", user_type="account_manager")
    assert allowed(a, "user:ali", "login", "company:field_c")
    assert not allowed(a, "user:ali", "login", "company:field_b")
    # Agency managers are not selectable for groups of child companies.
    a.create_group("mia", "field_c", "Night shift")
    a.add_to_tenant("mia", "field_c", "mia")
    with pytest.raises(AdminError, match="agency manager"):
        a.add_member("mia", "field_c", "night_shift", "mia")
    a.add_member("mia", "field_c", "night_shift", "ali")
    with pytest.raises(AdminError, match="without an owner or admin"):
        a.set_agency_manager("mia", "aktek_hq", "mia", on=False)


# groups and access -------------------------------------------------------------------------
def test_ontra_groups_nesting_and_fund_access(product: Factory) -> None:
    a = product("ontra")
    with pytest.raises(Denied):
        a.create_group("sara", "northwind", "Legal")
    a.create_group("adam", "northwind", "Legal")
    a.add_member("adam", "northwind", "legal", "tina")
    a.grant("adam", "northwind", "group:legal", "Edit", "fund_i")
    assert allowed(a, "user:tina", "update", "fund:fund_i")
    assert not allowed(a, "user:tina", "create", "fund:fund_i")
    # Nesting: members of legal's parent group get nothing; legal inside deals gets deals'.
    a.add_member("adam", "northwind", "deals", "group:legal")
    assert allowed(a, "user:tina", "update", "fund:fund_ii")
    with pytest.raises(AdminError, match="cycle"):
        a.add_member("adam", "northwind", "legal", "group:deals")
    a.remove_member("adam", "northwind", "deals", "group:legal")
    assert not allowed(a, "user:tina", "update", "fund:fund_ii")
    # Grant replaces the level; revoke removes it.
    a.grant("adam", "northwind", "user:sara", "Edit", "fund:fund_ii")
    assert allowed(a, "user:sara", "update", "fund:fund_ii")
    a.grant("adam", "northwind", "user:sara", "View", "fund_ii")
    assert not allowed(a, "user:sara", "update", "fund:fund_ii")
    assert allowed(a, "user:sara", "read", "fund:fund_ii")
    a.revoke("adam", "northwind", "user:sara", "fund_ii")
    assert not allowed(a, "user:sara", "read", "fund:fund_ii")
    # All funds covers a fund created later.
    a.grant("adam", "northwind", "user:tina", "View", "*")
    with a.sor.transaction() as tx:
        tx.insert("resources", type="fund", id="fund_iv", tenant_id="northwind")
    assert allowed(a, "user:tina", "read", "fund:fund_iv")
    with pytest.raises(AdminError, match="unknown access level"):
        a.grant("adam", "northwind", "user:tina", "Owner", "fund_i")
    with pytest.raises(AdminError, match="no fund"):
        a.grant("adam", "northwind", "user:tina", "View", "fund_x")
    # Deleting a group takes its grants away.
    a.delete_group("adam", "northwind", "legal")
    assert not allowed(a, "user:tina", "update", "fund:fund_i")
    # Tasks.
    assert not allowed(a, "user:finn", "comment", "task:task_8")
    a.assign_task("adam", "northwind", "task_8", "finn")
    assert allowed(a, "user:finn", "comment", "task:task_8")
    assert not allowed(a, "user:sara", "comment", "task:task_8")


def test_infosum_teams_datasets_and_auto_join(product: Factory) -> None:
    a = product("infosum")
    with pytest.raises(AdminError, match="cannot be deleted"):
        a.delete_group("olga", "orbit", "all_users")
    with pytest.raises(AdminError, match="everyone"):
        a.add_member("olga", "orbit", "all_users", "bea")
    with pytest.raises(AdminError, match="everyone"):
        a.remove_member("olga", "orbit", "all_users", "bea")
    a.add_member("alan", "orbit", "retail", "olga")
    assert allowed(a, "user:olga", "query", "dataset:ds_shop")
    a.create_group("alan", "orbit", "Data science")
    a.add_member("alan", "orbit", "data_science", "bea")
    assert not allowed(a, "user:bea", "query", "dataset:ds_shop")
    with pytest.raises(Denied):
        a.assign_dataset("bea", "orbit", "ds_shop", "data_science")
    a.assign_dataset("alan", "orbit", "ds_shop", "data_science")
    assert allowed(a, "user:bea", "query", "dataset:ds_shop")
    assert not allowed(a, "user:alan", "query", "dataset:ds_shop")  # assigning gives nothing
    a.unassign_dataset("alan", "orbit", "ds_shop", "orbit/data_science")
    assert not allowed(a, "user:bea", "query", "dataset:ds_shop")
    # Auto-join by e-mail domain: member, All Users team, no role.
    a.set_auto_join("olga", "orbit", "orbit.example")
    a.register("zoe@orbit.example", "s3cret-pass", "Zoe")
    assert allowed(a, "user:zoe@orbit.example", "list", "dataset:ds_all") is False
    assert a.sor.rows("memberships", tenant_id="orbit", user_id="zoe@orbit.example")
    a.assign_role("alan", "orbit", "zoe@orbit.example", "business_user")
    assert allowed(a, "user:zoe@orbit.example", "query", "dataset:ds_all")
    assert not allowed(a, "user:zoe@orbit.example", "query", "dataset:ds_tv")


def test_new_tenant_gets_owner_role_and_default_team(product: Factory) -> None:
    a = product("infosum")
    a.create_tenant("olga", "nova", "Nova")
    assert allowed(a, "user:olga", "delete_role", "company:nova")
    (team,) = a.sor.rows("groups", tenant_id="nova")
    assert team["is_default"] and team["name"] == "All Users"
    with pytest.raises(AdminError, match="already exists"):
        a.create_tenant("olga", "nova")


# bulk, export ------------------------------------------------------------------------------
def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_bulk_import_rejects_bad_rows_and_dry_run_writes_nothing(
    product: Factory, tmp_path: Path
) -> None:
    a = product("ontra")
    f = _csv(
        tmp_path / "users.csv",
        "First name,Last name,E-mail,Role\n"
        "Ann,One,ann@northwind.example,Standard\n"
        ",NoName,noname@northwind.example,\n"
        "Bob,Two,not-an-email,\n"
        "Cid,Three,ann@northwind.example,\n"
        "Dee,Four,sara@example.com,\n"
        "Eve,Five,eve@northwind.example,Janitor\n"
        "Fay,Six,fay@northwind.example,admin\n",
    )
    rows = read_rows(f)
    before = a.sor.revision()
    dry = import_users(a, "adam", "northwind", rows, dry_run=True)
    assert a.sor.revision() == before
    assert [c["email"] for c in dry.created] == ["ann@northwind.example", "fay@northwind.example"]
    reasons = {r.line: r.reason for r in dry.rejected}
    assert reasons == {
        3: "first name is missing",
        4: "'not-an-email' is not a valid e-mail address",
        5: "duplicate of the e-mail on line 2",
        6: "a user with this e-mail already exists",
        7: "unknown role 'Janitor': ontra roles are Admin, Standard",
    }
    seen: list[tuple[int, int]] = []
    rep = import_users(a, "adam", "northwind", rows, progress=lambda i, n: seen.append((i, n)))
    assert rep.revision == a.sor.revision() == before + 1  # one transaction
    assert seen[-1][0] == seen[-1][1]
    assert len(rep.created) == 2 and len(rep.rejected) == 5
    (fay,) = a.sor.rows("users", id="fay@northwind.example")
    assert fay["status"] == "invited" and fay["first_name"] == "Fay"
    assert not allowed(a, "user:fay@northwind.example", "manage_users", "org:northwind")
    a.accept(rep.created[1]["link"].rsplit("/", 1)[1], password="a good password")
    assert allowed(a, "user:fay@northwind.example", "manage_users", "org:northwind")
    with pytest.raises(Denied):
        import_users(a, "sara", "northwind", rows)
    with pytest.raises(AdminError, match="exceed the limit of 3"):
        import_users(a, "adam", "northwind", rows, limit=3)


def test_xlsx_template_round_trip_and_exports(product: Factory, tmp_path: Path) -> None:
    from openpyxl import load_workbook

    a = product("ontra")
    tpl = tmp_path / "template.xlsx"
    write_template(tpl, a)
    wb = load_workbook(tpl)
    ws = wb["users"]
    assert [c.value for c in ws[1]][:3] == ["first_name*", "last_name", "email*"]
    ws.append(["Gil", "Seven", "gil@northwind.example", "fr", "", "", ""])
    wb.save(tpl)
    rep = import_users(a, "adam", "northwind", read_rows(tpl))
    assert [c["email"] for c in rep.created] == ["gil@northwind.example"]
    t = export_users(a, "adam", "northwind", "audit")
    by_user = {r[0]: dict(zip(t.columns, r, strict=True)) for r in t.rows}
    assert by_user["finn"]["groups"] == "deals; finance"
    assert by_user["finn"]["access level"] == "Edit"
    assert by_user["finn"]["fund access"] == "All funds: View; fund_ii: Edit"
    assert by_user["sara"]["fund access"] == "fund_i: Edit; fund_ii: View"
    assert by_user["adam"]["role"] == "Admin" and by_user["tina"]["access level"] == "none"
    assert by_user["adam"]["access level"] == "Admin (all)"
    assert by_user["gil@northwind.example"]["status"] == "invited"
    p = export_users(a, "adam", "northwind", "profile")
    assert p.columns[:3] == ["joining date", "email", "language"]
    out = tmp_path / "audit.xlsx"
    t.xlsx(str(out))
    rows = list(load_workbook(out).active.iter_rows(values_only=True))
    assert list(rows[0]) == t.columns and len(rows) == len(t.rows) + 1
    assert t.csv().splitlines()[0] == ",".join(t.columns)
    with pytest.raises(Denied):
        export_users(a, "sara", "northwind")


def test_history_records_who_what_when_before_after(product: Factory) -> None:
    a = product("importers")
    r1 = a.assign_role("olivia", "datahub", "umar", "guest")
    r2 = a.assign_role("olivia", "datahub", "umar", "user")
    h = history(a, "umar", "datahub", "umar")
    assert [(x["action"], x["revision"]) for x in h] == [
        ("role.assign", r1.revision),
        ("role.assign", r2.revision),
    ]
    assert h[0]["before"]["roles"] == ["user"] and h[0]["after"]["roles"] == ["guest"]
    assert h[0]["actor"] == "olivia" and h[0]["at"]
