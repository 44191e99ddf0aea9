"""The reader-stall floor of this machine, with no gatehouse code at all.

    python bench/gil_floor.py [--bursts 20] [--burst-ms 10] [--switch-ms 0.5]

A reader thread spins a small pure-Python loop and stamps each round; the main thread runs
CPU-bound pure-Python bursts (like `GraphStore.apply`, with the same lowered
`sys.setswitchinterval`) separated by 10 ms sleeps. Printed: the reader's gaps that overlap a
burst (p99, max, count over 1 ms) and the gaps with no burst running. On an idle 2-core
machine the overlapping gaps stay near the switch interval; when other processes compete
for the cores, the OS scheduler adds gaps of tens of ms that no engine change can remove.
`bench_core.py`'s "reader max stall" rows should be read against this floor.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time


def measure(
    bursts: int, burst_ms: float, switch_ms: float, rearm: bool = True
) -> tuple[list[int], list[int]]:
    """Reader gaps (ns) that overlap a pure-Python burst, and those that overlap none.
    `rearm`: release the GIL once after lowering the interval, as `GraphStore` does, so the
    waiting reader waits again with the lowered interval instead of the one it started with."""
    stamps: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        x = 0
        rec = stamps.append
        clock = time.perf_counter_ns
        while not stop.is_set():
            for i in range(300):
                x += i
            rec(clock())

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    time.sleep(0.05)
    windows: list[tuple[int, int]] = []
    for _ in range(bursts):
        old = sys.getswitchinterval()
        sys.setswitchinterval(switch_ms / 1e3)
        if rearm:
            time.sleep(0)
        t0 = time.perf_counter_ns()
        y = 0
        while time.perf_counter_ns() - t0 < burst_ms * 1e6:
            y += 1
        t1 = time.perf_counter_ns()
        sys.setswitchinterval(old)
        windows.append((t0, t1))
        time.sleep(0.01)
    stop.set()
    th.join()
    inside: list[int] = []
    outside: list[int] = []
    wi = 0
    for s0, s1 in itertools.pairwise(stamps):
        while wi < len(windows) and windows[wi][1] < s0:
            wi += 1
        hit = wi < len(windows) and windows[wi][0] <= s1
        (inside if hit else outside).append(s1 - s0)
    return inside, outside


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--burst-ms", type=float, default=10.0)
    p.add_argument("--switch-ms", type=float, default=0.25)
    p.add_argument(
        "--no-rearm",
        action="store_true",
        help="lower the interval without the release that re-arms a waiting reader",
    )
    a = p.parse_args(argv)
    inside, outside = measure(a.bursts, a.burst_ms, a.switch_ms, not a.no_rearm)
    print(f"1-min load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, gaps in (("during bursts", inside), ("between bursts", outside)):
        gaps.sort()
        if not gaps:
            continue
        p99 = gaps[int(0.99 * (len(gaps) - 1))] / 1e6
        over = sum(g > 1e6 for g in gaps)
        print(
            f"reader gaps {name}: n {len(gaps)}, p99 {p99:.3f} ms, "
            f"max {gaps[-1] / 1e6:.2f} ms, {over} over 1 ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
