"""`gatehouse serve --workers N`: N server processes on one port, supervised by the parent.

Each worker is a full replica (its own policy, graph, caches and metrics) started with the
`spawn` method, so no gRPC state crosses a fork. The workers bind the same `--listen` port
with SO_REUSEPORT and the kernel spreads connections over them. The parent forwards
SIGTERM/SIGINT to every worker and exits when they have exited; if one worker exits on its
own, the parent stops the others and exits non-zero, so the supervisor above it (kubelet,
systemd) restarts the whole group.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

WorkerMain = Callable[[dict[str, Any], int], int]


def _child(main: WorkerMain, settings: dict[str, Any], index: int) -> None:
    sys.exit(main(settings, index))


def supervise(main: WorkerMain, settings: dict[str, Any], workers: int, grace: float) -> int:
    """Run `main(settings, i)` in `workers` processes; return the group's exit code."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_child, args=(main, settings, i), name=f"gatehouse-worker-{i}")
        for i in range(workers)
    ]
    stopping = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        # No exitcode/poll here: reaping from a signal handler could race the main loop.
        stopping.set()
        for p in procs:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    if stopping.is_set():  # a signal arrived while starting: make sure every worker gets it
        forward(signal.SIGTERM, None)
    pids = " ".join(str(p.pid) for p in procs)
    print(f"gatehouse: supervising {workers} workers (pids {pids})", file=sys.stderr, flush=True)
    first_exit: int | None = None
    while any(p.exitcode is None for p in procs):
        multiprocessing.connection.wait([p.sentinel for p in procs if p.exitcode is None], 0.5)
        if stopping.is_set() or first_exit is not None:
            continue
        for p in procs:
            if p.exitcode is not None:
                first_exit = p.exitcode
                print(
                    f"gatehouse: worker {p.name} exited with {p.exitcode}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                forward(signal.SIGTERM, None)
                stopping.clear()  # not a requested stop: report the failure below
                break
    # Workers drain for `grace` seconds; a worker that is still alive well after that is killed.
    for p in procs:
        p.join(timeout=grace + 30)
        if p.exitcode is None:
            p.kill()
            p.join()
    if first_exit is not None:
        return first_exit if first_exit > 0 else 1
    ok = (0, -signal.SIGTERM, -signal.SIGINT)
    return 0 if all(p.exitcode in ok for p in procs) else 1
