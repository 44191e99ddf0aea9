"""Deterministic synthetic multi-tenant relationship graph for the benchmarks.

Each tenant is an `org` with users, groups nested up to five levels deep, org roles (admin,
member), "All resources" grants (org#all_viewer / org#all_editor, reached from every fund by
the arrow `org->view_all`) and per-fund grants (viewer / editor, to users directly and to
`group#member`). Tenant 0 is the "big" tenant with 10,000 funds, so its admin can list about
10,000 ids; the other tenants are smaller. Tenants are added until the target tuple count is
reached, so the total is the target rounded up to a whole tenant.

    python bench/gen.py --tuples 100000 --seed 7 > tuples.txt
    python bench/gen.py --schema

The same (target, seed) always yields the same tuples in the same order.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

SCHEMA = """\
definition user {}

definition group {
    relation member: user | group#member
}

definition org {
    relation admin: user | group#member
    relation member: user | group#member
    relation all_viewer: user | group#member
    relation all_editor: user | group#member
    permission edit_all = all_editor + admin
    permission view_all = all_viewer + edit_all
    permission is_member = member + admin
}

definition fund {
    relation org: org
    relation viewer: user | group#member
    relation editor: user | group#member
    permission write = editor + org->edit_all
    permission read = viewer + write + org->view_all
}
"""

BIG_TENANT_FUNDS = 10_000
FUNDS_PER_TENANT = 1_000
MAX_GROUP_DEPTH = 5
HUGE_THRESHOLD = 10_000_000


@dataclass(slots=True)
class Tenant:
    """What the benchmark needs to know about one generated tenant."""

    org: str
    funds: list[str]
    users: list[str]
    admins: list[str]
    groups: int
    max_depth: int


@dataclass(slots=True)
class Dataset:
    tuples: list[str]
    tenants: list[Tenant] = field(default_factory=list)
    seed: int = 0

    @property
    def big_admin(self) -> str:
        """A user who may read every fund of the big tenant (~10,000 funds)."""
        return self.tenants[0].admins[0]


def _tenant(t: int, n_funds: int, rng: random.Random, out: list[str]) -> Tenant:
    org = f"org:t{t}"
    n_users = max(8, n_funds // 4)
    n_groups = max(5, n_users // 8)
    users = [f"user:t{t}-u{i}" for i in range(n_users)]
    groups = [f"group:t{t}-g{i}" for i in range(n_groups)]
    funds = [f"fund:t{t}-f{i}" for i in range(n_funds)]
    app = out.append

    # Groups: a forest; each non-root group is a member of one shallower group.
    depth = [1] * n_groups
    for i in range(1, n_groups):
        if rng.random() < 0.3:
            continue  # a root group
        parent = rng.randrange(i)
        if depth[parent] >= MAX_GROUP_DEPTH:
            continue
        depth[i] = depth[parent] + 1
        app(f"{groups[parent]}#member@{groups[i]}#member")

    # Users: every user is an org member and in one or two groups.
    for u in users:
        app(f"{org}#member@{u}")
        app(f"{groups[rng.randrange(n_groups)]}#member@{u}")
        if rng.random() < 0.5:
            app(f"{groups[rng.randrange(n_groups)]}#member@{u}")

    # Org roles and "All resources" grants.
    admins = users[:2]
    for a in admins:
        app(f"{org}#admin@{a}")
    app(f"{org}#all_viewer@{groups[0]}#member")
    app(f"{org}#all_editor@{users[2]}")

    # Per-fund grants.
    for f in funds:
        app(f"{f}#org@{org}")
        app(f"{f}#viewer@{users[rng.randrange(n_users)]}")
        if rng.random() < 0.3:
            app(f"{f}#viewer@{users[rng.randrange(n_users)]}")
        if rng.random() < 0.3:
            app(f"{f}#editor@{users[rng.randrange(n_users)]}")
        if rng.random() < 0.4:
            app(f"{f}#viewer@{groups[rng.randrange(n_groups)]}#member")
        if rng.random() < 0.1:
            app(f"{f}#editor@{groups[rng.randrange(n_groups)]}#member")
    return Tenant(org, funds, users, admins, n_groups, max(depth))


def generate(target: int, seed: int = 7, huge: bool = False) -> Dataset:
    """About `target` tuples (rounded up to a whole tenant). Deterministic in (target, seed)."""
    if target >= HUGE_THRESHOLD and not huge:
        raise ValueError(f"{target} tuples needs huge=True (--huge)")
    out: list[str] = []
    ds = Dataset(out, seed=seed)
    t = 0
    while len(out) < target:
        rng = random.Random(seed * 1_000_003 + t)
        n_funds = BIG_TENANT_FUNDS if t == 0 else FUNDS_PER_TENANT
        ds.tenants.append(_tenant(t, n_funds, rng, out))
        t += 1
    return ds


def delta_batches(
    ds: Dataset, n_batches: int, size: int, seed: int = 11
) -> Iterator[tuple[list[str], list[str]]]:
    """`n_batches` deltas of `size` tuples: 80% new grants, 20% deletes of existing tuples."""
    rng = random.Random(seed)
    n_del = size // 5
    for _ in range(n_batches):
        writes: list[str] = []
        for _ in range(size - n_del):
            ten = ds.tenants[rng.randrange(len(ds.tenants))]
            f = ten.funds[rng.randrange(len(ten.funds))]
            u = ten.users[rng.randrange(len(ten.users))]
            writes.append(f"{f}#viewer@{u}")
        deletes = [ds.tuples[rng.randrange(len(ds.tuples))] for _ in range(n_del)]
        yield writes, deletes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tuples", type=int, default=100_000, help="target tuple count")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--huge", action="store_true", help="allow 10^7 tuples and more")
    p.add_argument("--schema", action="store_true", help="print the schema and exit")
    p.add_argument("--out", help="write tuples here (default: stdout)")
    a = p.parse_args(argv)
    if a.schema:
        sys.stdout.write(SCHEMA)
        return 0
    if a.tuples >= HUGE_THRESHOLD and not a.huge:
        p.error(f"--tuples {a.tuples} needs --huge")
    ds = generate(a.tuples, a.seed, a.huge)
    text = "\n".join(ds.tuples) + "\n"
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    print(f"{len(ds.tuples)} tuples, {len(ds.tenants)} tenants", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
