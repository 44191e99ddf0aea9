"""Block a long-running command until SIGTERM or SIGINT (Ctrl-C)."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def wait_for_termination() -> None:
    """Install SIGTERM/SIGINT handlers and return once either arrives. The main thread
    waits with a timeout so that signals are handled promptly."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
