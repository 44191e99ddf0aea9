"""How slow is reading memory again after it sat unread for a while, on this machine?

Fills an array, reads one 8-byte item per 4 KB page (timing each read), sleeps, and reads
again. With no other work in the process, a page that was read a moment ago reads in well
under a microsecond; the rounds after an idle period show how many pages, and how slowly,
the machine makes us wait for (a page fault below the guest kernel is invisible to it, but
holds whoever reads the page, with the GIL if it is held).

    python bench/cold_pages.py                  # 800 MB, idle 5 / 30 / 60 s
    python bench/cold_pages.py --mb 100 --idle 0.5 --idle 2 --idle 5
"""

from __future__ import annotations

import argparse
import time
from array import array

PAGE_ITEMS = 512  # 8-byte items per 4 KB page


def sweep(a: array[int], tag: str, slow_ns: int) -> None:
    clock = time.perf_counter_ns
    slow = worst = 0
    start = clock()
    for i in range(0, len(a), PAGE_ITEMS):
        t0 = clock()
        a[i]  # the read is the measurement
        d = clock() - t0
        slow += d > slow_ns
        worst = max(worst, d)
    total = (clock() - start) / 1e6
    pages = len(a) // PAGE_ITEMS
    print(
        f"{tag:>18}: {slow:6d} of {pages} page reads over {slow_ns / 1e3:g} us, "
        f"worst {worst / 1e3:8.1f} us, sweep {total:7.1f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=int, default=800)
    p.add_argument("--idle", type=float, action="append", help="seconds; repeatable")
    p.add_argument("--slow-us", type=float, default=20.0)
    a = p.parse_args(argv)
    n = a.mb * (1 << 20) // 8
    arr = array("q", [1]) * n
    for i in range(0, n, PAGE_ITEMS):  # distinct pages, all written once
        arr[i] = i
    slow_ns = int(a.slow_us * 1e3)
    sweep(arr, "just written", slow_ns)
    sweep(arr, "again", slow_ns)
    for idle in a.idle or [5.0, 30.0, 60.0]:
        time.sleep(idle)
        sweep(arr, f"after {idle:g} s idle", slow_ns)


if __name__ == "__main__":
    main()
