"""Load a bundle's fixture (tuples) into the reference system of record as domain rows.

The rows are found by inverting the bundle's mapping; users, tenants and memberships that
the tuples only imply are added as long as they map to nothing, and the result is checked:
mapping the rows forward must give back exactly the fixture's tuples.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gatehouse.sor.store import SystemOfRecord, WriteTx
from gatehouse.sync.mapping import MappingError, TupleMapping

TENANT_KINDS = ("org", "account", "company")


def rows_for(mapping: TupleMapping, tuples: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Domain rows (by table) whose mapping is exactly `tuples`."""
    wanted = list(dict.fromkeys(tuples))
    rows, left = mapping.invert(wanted)
    if left:
        raise MappingError(f"no mapping rule produces {left[:3]} ({len(left)} tuples)")
    users: set[str] = set()
    tenants: dict[str, str] = {}
    members: set[tuple[str, str]] = set()
    for r in rows.get("role_bindings", []):
        if r.get("subject_type") == "user":
            users.add(r["subject_id"])
            if r.get("scope_type") in TENANT_KINDS:
                tenants[r["scope_id"]] = r["scope_type"]
                members.add((r["scope_id"], r["subject_id"]))
    for r in rows.get("memberships", []):
        users.add(r["user_id"])
    for r in rows.get("group_members", []):
        if r.get("member_type") == "user":
            users.add(r["member_id"])
    for r in rows.get("access_grants", []):
        if r.get("subject_type") == "user":
            users.add(r["subject_id"])
    for r in rows.get("assignments", []):
        if r.get("assignee_type") == "user":
            users.add(r["assignee_id"])
    for r in rows.get("resources", []):
        if r.get("creator_id"):
            users.add(r["creator_id"])
    extra: dict[str, list[dict[str, Any]]] = {
        "users": [
            {"id": u, "email": u if "@" in u else f"{u}@example.com", "first_name": u}
            for u in sorted(users)
        ],
    }
    have = {r["id"] for r in rows.get("tenants", [])}
    extra["tenants"] = [
        {"id": t, "kind": k, "name": t} for t, k in sorted(tenants.items()) if t not in have
    ]
    have_m = {(r["tenant_id"], r["user_id"]) for r in rows.get("memberships", [])}
    extra["memberships"] = [
        {"tenant_id": t, "user_id": u} for t, u in sorted(members) if (t, u) not in have_m
    ]
    for table, add in extra.items():
        for row in add:
            if not mapping.tuples(table, row):  # only rows that add no tuple
                rows.setdefault(table, []).append(row)
    return rows


def load_fixture(sor: SystemOfRecord, mapping: TupleMapping, tuples: Iterable[str]) -> int:
    """Insert the rows for `tuples` in one transaction; return its revision."""
    wanted = sorted(set(tuples))
    rows = rows_for(mapping, wanted)
    got = sorted({t for table, rs in rows.items() for r in rs for t in mapping.tuples(table, r)})
    if got != wanted:  # an ambiguous mapping; refuse rather than load something else
        raise MappingError(f"fixture does not round-trip: {sorted(set(got) ^ set(wanted))[:5]}")
    with sor.transaction() as tx:
        insert_rows(tx, rows)
    return tx.revision


def insert_rows(tx: WriteTx, rows: dict[str, list[dict[str, Any]]]) -> None:
    for table, rs in rows.items():
        tx.insert_many(table, rs)
