"""Pieces of the admin layer that need no database: token and password hashing, input
validation, admin.yaml checks, spreadsheet parsing, and reading who decided a preview cell
from a proof tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gatehouse.admin import AdminError, load_config
from gatehouse.admin.authz import Proof
from gatehouse.admin.bulk import read_rows
from gatehouse.admin.config import ConfigError, parse_config
from gatehouse.admin.reports import decided_by
from gatehouse.admin.secrets import hash_password, hash_token, new_token, verify_password
from gatehouse.admin.service import check_profile, norm_email, slugify
from gatehouse.bundle.loader import load_bundle

ROOT = Path(__file__).resolve().parents[2]
PRODUCTS = ["kontomatik", "ontra", "infosum", "importers", "aktek"]


def test_tokens_are_random_and_stored_as_sha256() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43
    assert hash_token(a) == hashlib.sha256(a.encode()).hexdigest()


def test_a_token_never_starts_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gatehouse admin user accept TOKEN` would read a token starting with "-" as an
    option: such a draw is thrown away."""
    import secrets

    draws = iter(["-leading-dash", "_fine-token"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(draws))
    assert new_token() == "_fine-token"


def test_passwords_are_salted_scrypt() -> None:
    h1, h2 = hash_password("hunter22!"), hash_password("hunter22!")
    assert h1 != h2 and h1.startswith("scrypt$") and "hunter22" not in h1
    assert verify_password("hunter22!", h1) and verify_password("hunter22!", h2)
    assert not verify_password("hunter23!", h1)
    assert not verify_password("x", None) and not verify_password("x", "md5$abc")


def test_email_and_names() -> None:
    assert norm_email("  Ana@Acme.Example ") == "ana@acme.example"
    for bad in ("", "ana", "ana@", "@acme", "a b@c.d", "ana@acme,bob@acme", "ana'x@acme.example"):
        with pytest.raises(AdminError):
            norm_email(bad)
    assert slugify("Finance team") == "finance_team"
    assert slugify(" Q3 / Deals ") == "q3_deals"
    with pytest.raises(AdminError):
        slugify("!!!")


@pytest.mark.parametrize("product", PRODUCTS)
def test_every_seed_bundle_has_a_valid_admin_config(product: str) -> None:
    cfg = load_config(load_bundle(ROOT / "bundles" / product))
    assert cfg.product == product
    assert "users.invite" in cfg.actions and "users.view" in cfg.actions
    assert cfg.roles.guard, "every product keeps an owner or admin"
    for t in cfg.roles.templates.values():
        for cell in t.cells:  # template cells are cells of the schema
            rel = cfg.roles.cell_relation.format(cell=cell)
            cfg.bundle.schema.check_tuple(cfg.tenant_type, rel, "role", "member", False)


def test_profile_validation_uses_the_products_user_types() -> None:
    cfg = load_config(load_bundle(ROOT / "bundles" / "aktek"))
    assert check_profile(cfg, {"user_type": "account_manager", "language": "pt-BR"}) == {
        "user_type": "account_manager",
        "language": "pt-BR",
    }
    with pytest.raises(AdminError, match="user type"):
        check_profile(cfg, {"user_type": "standard"})
    with pytest.raises(AdminError, match="not a profile field"):
        check_profile(cfg, {"status": "active"})
    with pytest.raises(AdminError, match="phone"):
        check_profile(cfg, {"phone": "call me"})


def test_admin_config_is_checked_against_the_schema() -> None:
    bundle = load_bundle(ROOT / "bundles" / "ontra")
    cfg = load_config(bundle)
    base = "version: 1\ntenant: {type: org}\nroles: {model: fixed, templates: {admin: {}}}\n"
    parse_config(base + "actions: {users.invite: manage_users}\n", bundle, cfg.mapping)
    with pytest.raises(ConfigError, match="org has no 'fly'"):
        parse_config(base + "actions: {users.invite: fly}\n", bundle, cfg.mapping)
    with pytest.raises(ConfigError, match="unknown action"):
        parse_config(base + "actions: {users.teleport: manage_users}\n", bundle, cfg.mapping)
    with pytest.raises(ConfigError, match="not in the schema"):
        parse_config(base.replace("type: org", "type: planet"), bundle, cfg.mapping)
    with pytest.raises(ConfigError, match="not a template"):
        parse_config(
            base.replace("templates: {admin: {}}", "templates: {admin: {}}, default: boss"),
            bundle,
            cfg.mapping,
        )


def test_read_rows_csv_headers_and_delimiters(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("\ufeffFirst name*;E-mail*;Role\nAnn;ann@x.example;Viewer\n\n", encoding="utf-8")
    assert read_rows(f) == [{"first_name": "Ann", "email": "ann@x.example", "role": "Viewer"}]
    f.write_text("name,email\nAnn,ann@x.example\n", encoding="utf-8")
    with pytest.raises(AdminError, match="missing column"):
        read_rows(f)
    f.write_text("first_name,email,salary\nAnn,ann@x.example,1\n", encoding="utf-8")
    with pytest.raises(AdminError, match="unknown column"):
        read_rows(f)
    g = tmp_path / "a.pdf"
    g.write_text("x")
    with pytest.raises(AdminError, match=r"\.csv or \.xlsx"):
        read_rows(g)
    h = tmp_path / "bad.xlsx"
    h.write_text("not a zip")
    with pytest.raises(AdminError, match="not a readable XLSX"):
        read_rows(h)


def _p(label: str, allowed: bool, *children: Proof) -> Proof:
    return Proof(label, allowed, list(children))


def test_decided_by_names_the_roles_override_or_blocker() -> None:
    via_roles = _p(
        "report:r#view: but not",
        True,
        _p(
            "report:r#view: any of",
            True,
            _p(
                "report:r#grant_view",
                True,
                _p(
                    "through report:r#grant_view@role:a/analyst#member: role:a/analyst#member",
                    True,
                    _p("tuple role:a/analyst#member@user:eve", True),
                ),
            ),
        ),
        _p("excluded if: company:a#blocked", False),
    )
    assert decided_by(True, via_roles) == "role a/analyst"
    blocked = _p(
        "x: but not",
        False,
        _p("x: any of", True, _p("tuple role:a/analyst#member@user:fred", True)),
        _p("excluded if: company:a#frozen", True, _p("tuple company:a#frozen@user:fred", True)),
    )
    assert decided_by(False, blocked) == "blocked by company:a#frozen@user:fred"
    assert decided_by(False, _p("x", False)) == "no role or rule allows it"
    override = _p(
        "company:a#superadmin",
        True,
        _p(
            "through company:a#superadmin@role:a/sa#member: role:a/sa#member",
            True,
            _p("tuple role:a/sa#member@user:sam", True),
        ),
    )
    assert decided_by(True, override) == "Above permissions (a/sa)"
    direct = _p("fund:f#editor", True, _p("tuple fund:f#editor@user:sara", True))
    assert decided_by(True, direct) == "fund:f#editor@user:sara"
