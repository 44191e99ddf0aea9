"""Core decision-engine benchmark: load, memory, check, list-allowed, deltas under reads.

    python bench/bench_core.py --tuples 100000 --tuples 1000000 --out bench/results-core.md

Per size it measures, on the synthetic multi-tenant graph of bench/gen.py:
  * load time of GraphStore.load (strings in, parsing included);
  * RSS growth per tuple (/proc/self/statm around the load, after gc.collect());
  * check latency p50/p99, allowed and denied separately, subject and resource parsed once
    outside the timed region; and again with parse_subject/parse_object inside it;
  * list_allowed for a user who may read ~10,000 funds (p50/p99);
  * GraphStore.apply of 1,000-tuple deltas (p50/p99) while a reader thread runs checks, and
    the reader's longest stall (largest gap between two consecutive completed checks).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import random
import sys
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen import HUGE_THRESHOLD, SCHEMA, Dataset, delta_batches, generate
from gil_floor import measure as gil_floor

from gatehouse.engine import Evaluator
from gatehouse.graph import Delta, GraphStore, parse_object, parse_subject
from gatehouse.model import compile_schema
from gatehouse.server.app import map_large_allocations

PAGE = os.sysconf("SC_PAGE_SIZE")

TARGETS = {
    "check_p50_us": 5.0,
    "check_p99_us": 30.0,
    "list_p99_ms": 5.0,
    "bytes_per_tuple": 60.0,
    "delta_ms": 20.0,
    "stall_ms": 1.0,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def retained_bytes(st: GraphStore) -> int:
    """sys.getsizeof of the packed index arrays, the overlay and the interner's object tables.

    RSS growth also counts memory freed during load (parsed tuples, the build lists) that
    the allocator keeps; this is what the loaded graph itself holds on to.
    """
    return st.current.nbytes() + st.interner.nbytes()


def pct(samples: list[int], p: float) -> float:
    s = sorted(samples)
    return float(s[min(len(s) - 1, int(p / 100.0 * len(s)))])


def _pairs(
    ds: Dataset, ev: Evaluator, st: GraphStore, n: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """~n allowed and ~n denied (user, fund) pairs, classified by an untimed check.

    Candidates are random same-tenant pairs plus cross-tenant pairs (always denied); a real
    check decides which list each lands in.
    """
    rng = random.Random(seed)
    allowed: list[tuple[str, str]] = []
    denied: list[tuple[str, str]] = []
    snap = st.current
    tenants = ds.tenants
    tries = 0
    while (len(allowed) < n or len(denied) < n) and tries < 50 * n:
        tries += 1
        ta = tenants[rng.randrange(len(tenants))]
        if rng.random() < 0.25 and len(tenants) > 1:
            tb = tenants[rng.randrange(len(tenants))]
        else:
            tb = ta
        u = ta.users[rng.randrange(len(ta.users))]
        f = tb.funds[rng.randrange(len(tb.funds))]
        ok = ev.check(snap, parse_subject(u), "read", parse_object(f)).allowed
        (allowed if ok else denied).append((u, f))
    return allowed[:n], denied[:n]


def time_checks(
    ev: Evaluator, st: GraphStore, pairs: list[tuple[str, str]], calls: int, parse: bool
) -> list[int]:
    clock = time.perf_counter_ns
    check = ev.check
    snap = st.current
    out: list[int] = []
    rec = out.append
    if parse:
        ps, po = parse_subject, parse_object
        for i in range(calls):
            u, f = pairs[i % len(pairs)]
            t0 = clock()
            check(snap, ps(u), "read", po(f))
            rec(clock() - t0)
    else:
        parsed = [(parse_subject(u), parse_object(f)) for u, f in pairs]
        for i in range(calls):
            s, o = parsed[i % len(parsed)]
            t0 = clock()
            check(snap, s, "read", o)
            rec(clock() - t0)
    return out


def time_calls(fn: Callable[[], object], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


LAST_RUN: dict[str, object] = {}  # the last run's reader stamps and apply windows


def run_size(target: int, args: argparse.Namespace) -> dict[str, float]:
    r: dict[str, float] = {}
    ds = generate(target, args.seed, huge=args.huge)
    r["tuples"] = len(ds.tuples)
    r["tenants"] = len(ds.tenants)
    ev = Evaluator(compile_schema(SCHEMA))
    st = GraphStore()

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    snap = st.load(ds.tuples, revision=1)
    r["load_s"] = time.perf_counter() - t0
    gc.collect()
    r["rss_per_tuple"] = (rss_bytes() - rss0) / snap.count
    r["stored"] = snap.count
    r["retained_per_tuple"] = retained_bytes(st) / snap.count
    if args.gc_freeze:
        # As `gatehouse serve` does once its first data is loaded: the process's long-lived
        # objects (here also the generator's data set) leave the collector's generations, so
        # a full collection triggered during a delta does not walk them with the GIL held;
        # and large arrays grow by remapping pages, not by copying (`map_large_allocations`).
        gc.collect()
        gc.freeze()
        map_large_allocations()
    log(f"  loaded {snap.count} tuples in {r['load_s']:.2f}s, {r['rss_per_tuple']:.0f} B/tuple")

    allowed, denied = _pairs(ds, ev, st, args.pairs, args.seed)
    r["allowed_pairs"], r["denied_pairs"] = len(allowed), len(denied)
    for name, pairs in (("allowed", allowed), ("denied", denied)):
        for parse in (False, True):
            time_checks(ev, st, pairs, min(2000, args.checks), parse)  # warm up
            ns = time_checks(ev, st, pairs, args.checks, parse)
            key = f"check_{name}{'_parsed' if parse else ''}"
            r[f"{key}_p50"] = pct(ns, 50) / 1e3
            r[f"{key}_p99"] = pct(ns, 99) / 1e3
        log(
            f"  check {name}: p50 {r[f'check_{name}_p50']:.1f}us p99 {r[f'check_{name}_p99']:.1f}us"
        )

    # The same pairs with no closure reuse between checks (Evaluator(closure_cache=0)): every
    # check builds the subject's group closure again, as the first check of a subject on a
    # new snapshot does. The rows above reuse it: ~10 checks per subject per snapshot here.
    cold = Evaluator(compile_schema(SCHEMA), closure_cache=0)
    for name, pairs in (("allowed", allowed), ("denied", denied)):
        time_checks(cold, st, pairs, min(2000, args.checks), False)  # warm up
        ns = time_checks(cold, st, pairs, args.checks, False)
        r[f"check_{name}_cold_p50"] = pct(ns, 50) / 1e3
        r[f"check_{name}_cold_p99"] = pct(ns, 99) / 1e3
    # A/B in the same run: the compiled check on the Python nodes instead of the C kernel.
    py = Evaluator(compile_schema(SCHEMA), native=False)
    for name, pairs in (("allowed", allowed), ("denied", denied)):
        time_checks(py, st, pairs, min(2000, args.checks), False)  # warm up
        ns = time_checks(py, st, pairs, args.checks, False)
        r[f"check_{name}_py_p50"] = pct(ns, 50) / 1e3
        r[f"check_{name}_py_p99"] = pct(ns, 99) / 1e3
    # Batches of 100 through check_many (what CheckBatch calls): time per check.
    mixed = [(parse_subject(u), "read", parse_object(f)) for u, f in allowed + denied]
    batches = [mixed[i : i + 100] for i in range(0, len(mixed) - 99, 100)]
    snap_now = st.current
    for b in batches[:5]:
        ev.check_many(snap_now, b)
    ns = time_calls(lambda: [ev.check_many(snap_now, b) for b in batches], 5)
    r["check_many_us"] = min(ns) / 1e3 / (100 * len(batches))
    log(
        f"  check cold closure: allowed p50 {r['check_allowed_cold_p50']:.1f}us "
        f"denied p50 {r['check_denied_cold_p50']:.1f}us; Python nodes: allowed p50 "
        f"{r['check_allowed_py_p50']:.1f}us; check_many {r['check_many_us']:.2f}us per check"
    )

    subj = parse_subject(ds.big_admin)
    n_ids = len(ev.list_allowed(st.current, subj, "read", "fund"))
    r["list_ids"] = n_ids
    ns = time_calls(lambda: ev.list_allowed(st.current, subj, "read", "fund"), args.lists)
    r["list_p50"] = pct(ns, 50) / 1e6
    r["list_p99"] = pct(ns, 99) / 1e6
    log(f"  list_allowed {n_ids} ids: p50 {r['list_p50']:.2f}ms p99 {r['list_p99']:.2f}ms")

    batches = delta_batches(ds, args.deltas + 10, args.delta_size, args.seed)
    deltas = [Delta.of(w, d) for w, d in batches]
    # Ten deltas with no reader running: the cost of apply itself, without GIL sharing.
    alone = []
    for d in deltas[:10]:
        t0 = time.perf_counter_ns()
        st.apply(d)
        alone.append(time.perf_counter_ns() - t0)
    deltas = deltas[10:]
    r["delta_alone_p50"] = pct(alone, 50) / 1e6
    r["delta_alone_max"] = max(alone) / 1e6
    reader_pairs = [(parse_subject(u), parse_object(f)) for u, f in (allowed + denied)[:1000]]
    if args.gc_freeze:
        # The deltas and pairs are the benchmark's inputs, held for the whole run; in a
        # server they are transient (decoded, applied, dropped), so keep them out of the
        # collections the applies trigger.
        gc.freeze()
    stop = threading.Event()
    # An array made in advance, not a list: a list of millions of stamps is one object a full
    # collection walks item by item (~10 ms with the GIL held, seen in `perf` inside an
    # apply), and a growing array is now and then reallocated (copied or remapped, ~1 ms at
    # a few MB), a stall of the reader's own. 2^23 stamps outlast any run here.
    stamps: array[int] = array("q", [0]) * (1 << 23)
    taken = [0]

    def reader() -> None:
        clock = time.perf_counter_ns
        i = 0
        n = len(reader_pairs)
        cap = len(stamps)
        while not stop.is_set() and i < cap:
            s, o = reader_pairs[i % n]
            ev.check(st.current, s, "read", o)
            stamps[i] = clock()
            i += 1
        taken[0] = i

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    time.sleep(0.05)
    windows: list[tuple[int, int]] = []
    # Compactions published so far, before each delta (counts, not the base arrays: holding
    # those would keep every replaced base alive, which the store frees a slice at a time).
    bases = []
    for d in deltas:
        bases.append(st.compactions)
        t0 = time.perf_counter_ns()
        st.apply(d)
        t1 = time.perf_counter_ns()
        windows.append((t0, t1))
        time.sleep(0.01)
    st.wait_compacted()
    bases.append(st.compactions)
    stop.set()
    th.join()
    if taken[0] == len(stamps):
        log("  note: the reader's stamps ran out before the deltas ended")
    del stamps[taken[0] :]
    # Compaction runs on a background thread: a delta "compacted" when a new packed base was
    # published between its start and the next delta's start (or its neighbour's did).
    changed = [bases[i + 1] != bases[i] for i in range(len(deltas))]
    compactions = sum(changed)
    compacted = [changed[i] or (i > 0 and changed[i - 1]) for i in range(len(deltas))]
    ns = [b - a for a, b in windows]
    r["delta_p50"] = pct(ns, 50) / 1e6
    r["delta_p99"] = pct(ns, 99) / 1e6
    r["delta_max"] = max(ns) / 1e6
    r["compactions"] = compactions
    r["deltas"] = len(deltas)
    # The longest gap between consecutive reader completions that overlaps an apply.
    stall = 0
    stall_plain = 0  # during deltas that did not compact the overlay into the base
    stall_any = 0
    stall_idle = 0  # control: gaps that overlap no apply (GC, the OS scheduler, the machine)
    inside: list[int] = []  # every gap that overlaps an apply
    wi = 0
    for a, b in itertools.pairwise(stamps):
        gap = b - a
        stall_any = max(stall_any, gap)
        while wi < len(windows) and windows[wi][1] < a:
            wi += 1
        if wi < len(windows) and windows[wi][0] <= b:
            inside.append(gap)
            stall = max(stall, gap)
            if not compacted[wi]:
                stall_plain = max(stall_plain, gap)
        elif windows[0][0] <= a:
            stall_idle = max(stall_idle, gap)
    # For ad-hoc analysis (a script that times the store's steps beside this run).
    LAST_RUN.update(stamps=stamps, windows=windows, compacted=compacted)
    r["stall_ms"] = stall / 1e6
    r["stall_p99_ms"] = pct(inside, 99) / 1e6 if inside else 0.0
    # How often, not only how long: a max is one sample, and moves with the machine.
    r["stalls_over_1ms"] = sum(g > 1_000_000 for g in inside)
    r["gaps_inside"] = len(inside)
    # The machine's floor in the same run: the same kind of reader against pure-Python
    # bursts as long as a median apply, at the same lowered switch interval.
    switch_ms = (st.switch_interval or sys.getswitchinterval()) * 1e3
    fin, _ = gil_floor(len(deltas), max(1.0, r["delta_p50"]), switch_ms)
    r["floor_max_ms"] = max(fin, default=0) / 1e6
    r["floor_p99_ms"] = pct(fin, 99) / 1e6 if fin else 0.0
    r["floor_over_1ms"] = sum(g > 1_000_000 for g in fin)
    r["floor_gaps"] = len(fin)
    r["stall_plain_ms"] = stall_plain / 1e6
    r["stall_any_ms"] = stall_any / 1e6
    r["stall_idle_ms"] = stall_idle / 1e6
    r["reader_checks"] = len(stamps)
    log(
        f"  delta {args.delta_size}: alone p50 {r['delta_alone_p50']:.1f}ms; "
        f"with reader p50 {r['delta_p50']:.1f}ms p99 {r['delta_p99']:.1f}ms, "
        f"reader stall {r['stall_ms']:.2f}ms ({r['stall_plain_ms']:.2f}ms without compaction, "
        f"{r['stall_idle_ms']:.2f}ms with no apply running), compactions {compactions}"
    )
    return r


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _mark(value: float, target: float) -> str:
    return "✅" if value <= target else "❌"


def render(results: list[dict[str, float]], args: argparse.Namespace) -> str:
    cols = [f"{int(r['tuples']):,} tuples" for r in results]
    rows: list[tuple[str, str, list[str]]] = []

    def row(label: str, target: str, fmt: Callable[[dict[str, float]], str]) -> None:
        rows.append((label, target, [fmt(r) for r in results]))

    def tgt(key: str, tk: str) -> Callable[[dict[str, float]], str]:
        return lambda r: f"{r[key]:.1f} {_mark(r[key], TARGETS[tk])}"

    row("tenants / stored tuples", "", lambda r: f"{int(r['tenants'])} / {int(r['stored']):,}")
    row("load (s)", "", lambda r: f"{r['load_s']:.2f}")
    row("RSS growth per tuple (B)", "≤ 60", tgt("rss_per_tuple", "bytes_per_tuple"))
    row(
        "retained by the graph per tuple (B, getsizeof)",
        "≤ 60",
        tgt("retained_per_tuple", "bytes_per_tuple"),
    )
    for name in ("allowed", "denied"):
        row(f"check {name} p50 (µs)", "≤ 5", tgt(f"check_{name}_p50", "check_p50_us"))
        row(f"check {name} p99 (µs)", "≤ 30", tgt(f"check_{name}_p99", "check_p99_us"))
        row(
            f"check {name} incl. parsing p50 / p99 (µs)",
            "",
            lambda r, n=name: (
                f"{r[f'check_{n}_parsed_p50']:.1f} / {r[f'check_{n}_parsed_p99']:.1f}"
            ),
        )
    for name in ("allowed", "denied"):
        row(
            f"check {name}, no closure reuse, p50 / p99 (µs)",
            "",
            lambda r, n=name: f"{r[f'check_{n}_cold_p50']:.1f} / {r[f'check_{n}_cold_p99']:.1f}",
        )
    for name in ("allowed", "denied"):
        row(
            f"check {name}, Python nodes (`native=False`), p50 / p99 (µs)",
            "",
            lambda r, n=name: f"{r[f'check_{n}_py_p50']:.1f} / {r[f'check_{n}_py_p99']:.1f}",
        )
    row("check_many, batches of 100, per check (µs)", "", lambda r: f"{r['check_many_us']:.2f}")
    row("list_allowed ids returned", "~10,000", lambda r: f"{int(r['list_ids']):,}")
    row("list_allowed p50 (ms)", "", lambda r: f"{r['list_p50']:.2f}")
    row(
        "list_allowed p99 (ms)",
        "≤ 5",
        lambda r: f"{r['list_p99']:.2f} {_mark(r['list_p99'], TARGETS['list_p99_ms'])}",
    )
    row(
        f"apply {args.delta_size}-tuple delta, no reader, p50 / max of 10 (ms)",
        "",
        lambda r: f"{r['delta_alone_p50']:.1f} / {r['delta_alone_max']:.1f}",
    )
    row(
        f"apply {args.delta_size}-tuple delta with reader p50 (ms)",
        "",
        lambda r: f"{r['delta_p50']:.1f}",
    )
    row(
        f"apply {args.delta_size}-tuple delta with reader p99 (ms)",
        "≤ 20",
        tgt("delta_p99", "delta_ms"),
    )
    row(
        "deltas that triggered compaction",
        "",
        lambda r: f"{int(r['compactions'])}/{int(r['deltas'])}",
    )
    row(
        "reader max stall during apply (ms)",
        "≤ 1",
        lambda r: f"{r['stall_ms']:.2f} {_mark(r['stall_ms'], TARGETS['stall_ms'])}",
    )
    row(
        "reader max stall, deltas without compaction (ms)",
        "≤ 1",
        lambda r: f"{r['stall_plain_ms']:.2f} {_mark(r['stall_plain_ms'], TARGETS['stall_ms'])}",
    )
    row("reader gaps during applies, p99 (ms)", "", lambda r: f"{r['stall_p99_ms']:.2f}")
    row(
        "reader gaps during applies over 1 ms / all",
        "",
        lambda r: f"{r['stalls_over_1ms']:,} / {r['gaps_inside']:,}",
    )
    row(
        "control: reader max gap between deltas, no apply running (ms)",
        "",
        lambda r: f"{r['stall_idle_ms']:.2f}",
    )
    row(
        "floor: reader gaps during pure-Python bursts, p99 / max (ms)",
        "",
        lambda r: f"{r['floor_p99_ms']:.2f} / {r['floor_max_ms']:.2f}",
    )
    row(
        "floor: gaps over 1 ms / all",
        "",
        lambda r: f"{r['floor_over_1ms']:,} / {r['floor_gaps']:,}",
    )

    out = ["| metric | target | " + " | ".join(cols) + " |"]
    out.append("|---|---|" + "---:|" * len(cols))
    for label, target, vals in rows:
        out.append(f"| {label} | {target} | " + " | ".join(vals) + " |")
    head = (
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; seed {args.seed}; {args.checks:,} timed checks per row, "
        f"{args.lists} list_allowed calls, {args.deltas} deltas "
        f"(80% writes / 20% deletes) with one reader thread; "
        f"sys.getswitchinterval() = {sys.getswitchinterval() * 1e3:g} ms; "
        f"gc.freeze() after load: {'yes' if args.gc_freeze else 'no'}; "
        f"1-min load average at start / end: {args.load_start:.1f} / {os.getloadavg()[0]:.1f}"
        + (
            " (above the CPU count: other processes were competing and the tails are inflated)."
            if max(args.load_start, os.getloadavg()[0]) > (os.cpu_count() or 1)
            else "."
        )
    )
    return head + "\n\n" + "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tuples", type=int, action="append", help="repeatable; default 10^5, 10^6")
    p.add_argument("--out", help="write the markdown table here as well")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--checks", type=int, default=20_000, help="timed checks per row")
    p.add_argument("--pairs", type=int, default=2_000, help="distinct pairs per outcome")
    p.add_argument("--lists", type=int, default=50, help="timed list_allowed calls")
    p.add_argument("--deltas", type=int, default=20)
    p.add_argument("--delta-size", type=int, default=1_000)
    p.add_argument("--huge", action="store_true", help=f"allow ≥ {HUGE_THRESHOLD:,} tuples")
    p.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval in ms (default: leave Python's 5 ms)",
    )
    p.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="skip the gc.freeze() after the load that the server does (experiment)",
    )
    args = p.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1e3)
    sizes = args.tuples or [100_000, 1_000_000]
    args.load_start = os.getloadavg()[0]
    results = []
    for n in sizes:
        log(f"size {n:,}")
        results.append(run_size(n, args))
    text = "## Core engine\n\n" + render(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
