"""Restart cost: loading the graph from a local snapshot file (what a sidecar does at start).

    python bench/bench_snapshot.py --tuples 1000000 [--tuples 10000000 --huge]
                                   [--out bench/results-snapshot.md]

For each size: the synthetic graph of bench/gen.py is loaded from text once (the old way,
for comparison), written as a binary snapshot file (gatehouse.graph.persist, as the feed
client persists it), then restored into a fresh store in a fresh process (so nothing is
warm), which checks that the restored graph holds the same number of tuples and answers a
sample of checks identically. Target (issue 2): 10^7 tuples from a local snapshot ≤ 30 s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

from gatehouse.engine.evaluator import Evaluator  # noqa: E402
from gatehouse.graph import persist  # noqa: E402
from gatehouse.graph.store import GraphStore  # noqa: E402
from gatehouse.graph.tuples import parse_object, parse_subject  # noqa: E402
from gatehouse.model.compiler import compile_schema  # noqa: E402

SAMPLE = 2000


def _probe(store: GraphStore, ds: gen.Dataset) -> list[bool]:
    ev = Evaluator(compile_schema(gen.SCHEMA))
    snap = store.current
    out = []
    tenants = ds.tenants
    for i in range(SAMPLE):
        t = tenants[i % len(tenants)]
        u = t.users[(i * 7) % len(t.users)]
        f = t.funds[(i * 13) % len(t.funds)]
        out.append(ev.check(snap, parse_subject(u), "read", parse_object(f)).allowed)
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _digest(answers: list[bool]) -> str:
    return hashlib.sha256(bytes(answers)).hexdigest()


def restore_child(path: str, target: int, seed: int, huge: bool) -> int:
    """Run in a fresh process: time the restore, then verify against the generator."""
    import gc

    gc.collect()
    rss0 = _rss()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    store = GraphStore()
    snap, _meta = persist.load(store, data)
    took = time.perf_counter() - t0
    del data
    gc.collect()
    per_tuple = (_rss() - rss0) / max(snap.count, 1)
    ds = gen.generate(target, seed, huge)
    answers = _probe(store, ds)
    print(f"{took:.3f} {snap.count} {_digest(answers)} {per_tuple:.1f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tuples", type=int, action="append")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--huge", action="store_true", help="allow 10^7 (several GB of RAM)")
    p.add_argument("--out", default=str(HERE / "results-snapshot.md"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    sizes = a.tuples or [100_000, 1_000_000]
    if a.child:
        return restore_child(a.child, sizes[0], a.seed, a.huge)
    lines = [
        "## Restart: loading the graph from a local snapshot file",
        "",
        "| tuples | load from text (s) | write snapshot (s) | file (MiB) | restore (s) | "
        "RSS growth on restore (B/tuple) | checks agree |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for n in sizes:
        ds = gen.generate(n, a.seed, a.huge)
        store = GraphStore()
        t0 = time.perf_counter()
        store.load(ds.tuples, 1)
        text_load = time.perf_counter() - t0
        expected = _probe(store, ds)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "data.snapshot")
            t0 = time.perf_counter()
            with open(path, "wb") as f:
                persist.dump(store.current, f, {"policy_digest": "bench"})
            write = time.perf_counter() - t0
            size = os.path.getsize(path) / 2**20
            count = store.current.count
            del store, ds
            cmd = [sys.executable, __file__, "--child", path, "--tuples", str(n)]
            cmd += ["--seed", str(a.seed)] + (["--huge"] if a.huge else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        took, got_count, answers, rss = float(out[0]), int(out[1]), out[2], out[3]
        agree = got_count == count and answers == _digest(expected)
        lines.append(
            f"| {count:,} | {text_load:.1f} | {write:.2f} | {size:.0f} | {took:.2f} | {rss} | "
            f"{'yes' if agree else 'NO'} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Restore = read the file, check its SHA-256, map the arrays, rebuild the interner's "
        "hash slots; measured in a fresh process. Target: 10^7 tuples ≤ 30 s.",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
