"""Bounded concurrency with back-pressure: a fixed number of inference workers, a bounded wait
queue in front of them, and an optional request-rate cap (the thermal watchdog lowers it).

A request that finds the queue full, or the rate used up, is refused at once with the seconds
after which a retry is likely to succeed; nothing ever queues without bound.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Callable

import numpy as np

from .batching import Batcher, Job


class Rejected(Exception):
    """The server is at capacity (or rate-limited); retry after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RateLimit:
    """A token bucket: at most ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Admission:
    """``workers`` inference threads and at most ``queue`` requests waiting for one.

    :meth:`predict` and :meth:`submit` run work on a worker when there is room and raise
    :class:`Rejected` otherwise, so memory is bounded by ``workers + queue`` requests in flight.
    Predictions that wait are stacked into one runner call of up to ``max_batch`` rows (see
    :mod:`~edgecompress.serve.batching`). ``inline`` runs each prediction on the event loop
    itself: for a model that takes less time than the hand-off to a thread, in a worker
    process that has a core to itself (``--workers`` = cores); requests then wait in their
    connections, one at a time per process, and none is refused for the queue.
    """

    def __init__(self, workers: int, queue: int, max_batch: int = 1, batch_wait_ms: float = 0.0,
                 observer: Callable[[int, int], None] | None = None, inline: bool = False):
        if workers < 1 or queue < 0:
            raise ValueError(f"workers must be >= 1 and queue >= 0 (got {workers}, {queue})")
        self.workers = workers
        self.queue = queue
        self.inline = inline  # run predictions on the calling (event loop) thread
        self.batcher = Batcher(workers, max_batch, batch_wait_ms)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._rate: RateLimit | None = None
        self._ema_s = 0.01  # smoothed service time, for Retry-After
        self.observer = observer  # told (in flight, waiting) on each change: shared metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests admitted but not yet on a worker (the queue length)."""
        return max(0, self._in_flight - self.workers)

    def set_rate(self, rate: float | None) -> None:
        """Cap the admitted requests per second (None: no cap)."""
        with self._lock:
            self._rate = RateLimit(rate) if rate else None

    @property
    def rate(self) -> float | None:
        return self._rate.rate if self._rate else None

    def _admit(self) -> None:
        with self._lock:
            if self._rate is not None and not self._rate.take():
                raise Rejected(f"rate limited to {self._rate.rate:g} requests/s (thermal "
                               f"policy)", retry_after=max(1, math.ceil(1 / self._rate.rate)))
            if self._in_flight >= self.workers + self.queue:
                wait = self._ema_s * (self.queue + self.workers) / self.workers
                raise Rejected(f"queue full ({self.queue} waiting, {self.workers} running)",
                               retry_after=max(1, math.ceil(wait)))
            self._in_flight += 1
            if self.observer is not None:
                self.observer(self._in_flight, self.waiting)

    def _done(self, seconds: float) -> None:
        with self._lock:
            self._in_flight -= 1
            self._ema_s = 0.9 * self._ema_s + 0.1 * seconds
            if self.observer is not None:
                self.observer(self._in_flight, self.waiting)

    async def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on a worker thread; :class:`Rejected` when there is no room."""
        return await self._enqueue(fn=fn, args=args)

    async def predict(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, float, int]:
        """``model.run(x)`` on a worker, stacked with other waiting requests when it can be:
        the output rows of ``x``, the seconds of the runner call and the rows that call held.
        :class:`Rejected` when there is no room. With ``inline``, the call runs right here on
        the event loop (no hand-off to a thread, no stacking)."""
        if self.inline:
            return self._run_inline(model, x)
        return await self._enqueue(model=model, x=x)

    def _run_inline(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, float, int]:
        self._admit()
        t0 = time.perf_counter()
        try:
            out = model.run(x)
        finally:
            seconds = time.perf_counter() - t0
            self._done(seconds)
        return out, seconds, len(x)

    async def _enqueue(self, **work: Any) -> Any:
        self._admit()
        loop = asyncio.get_running_loop()
        # the slot is freed when the work ends, not when the client stops waiting: a client that
        # disconnects must not let more work pile up behind the workers than the bound allows
        job = Job(loop, loop.create_future(), done=self._done, **work)
        try:
            self.batcher.put(job)
        except RuntimeError:  # shutting down
            self._done(0.0)
            raise Rejected("the server is shutting down", retry_after=5) from None
        return await job.future

    def close(self) -> None:
        self.batcher.close()
