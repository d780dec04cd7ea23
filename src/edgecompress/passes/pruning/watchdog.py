"""A time limit and progress messages for Torch-Pruning's graph work, which can run for minutes
without a word on some architectures (its index mapping on window-attention reshapes).

The work runs in the calling thread; a watchdog thread logs progress every few seconds and, past
the limit, raises :class:`GraphTimeout` in the calling thread (``PyThreadState_SetAsyncExc``:
delivered between Python bytecodes, which is where Torch-Pruning spends that time). No signal is
used, so it works in any thread and leaves pytest-timeout's and the user's alarms alone.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("edgecompress")

PROGRESS_EVERY = 15.0  # seconds between "still working" messages


class GraphTimeout(Exception):
    """Raised in the working thread when its time limit is over."""


def _interrupt(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(GraphTimeout))


@contextmanager
def time_limit(seconds: float | None, what: str, every: float = PROGRESS_EVERY) -> Iterator[None]:
    """Run the body with progress logged every ``every`` s; GraphTimeout past ``seconds``."""
    done, lock = threading.Event(), threading.Lock()
    target, start = threading.get_ident(), time.monotonic()

    def watch() -> None:
        while True:
            elapsed = time.monotonic() - start
            left = None if seconds is None else seconds - elapsed
            if done.wait(every if left is None else max(0.0, min(every, left))):
                return
            elapsed = time.monotonic() - start
            if seconds is not None and elapsed >= seconds:
                with lock:  # never fires once the body is over
                    if not done.is_set():
                        _interrupt(target)
                return
            log.info("%s: still working after %.0f s%s", what, elapsed,
                     "" if seconds is None else f" (time_limit={seconds:g} s)")

    watcher = threading.Thread(target=watch, name="edgecompress-prune-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        with lock:
            done.set()
        watcher.join()
