"""Inference workers with dynamic micro-batching.

A fixed set of worker threads takes jobs from one queue. A prediction that arrives while every
worker is busy waits in the queue; when a worker frees up it takes the oldest prediction and
every queued one it can stack with it (same model, same input shape past the batch dimension,
same dtype, at most ``max_batch`` rows in all; one is left for each idle worker), runs them as
one runner call and splits the outputs back per request — what Triton's dynamic batcher and
TorchServe's batch handler do.
Only models whose batch dimension is dynamic are stacked; a fixed-batch model runs one request
per call. If a stacked call fails, each request is rerun alone, so a bad one fails by itself.

Results reach the event loop with one ``call_soon_threadsafe`` per batch (no executor future
per request, no thread per request).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Job:
    """One unit of work: ``fn(*args)``, or a prediction of ``model`` on ``x`` (``fn`` None)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    model: Any = None
    x: np.ndarray | None = None
    done: Callable[[float], None] | None = field(default=None, repr=False)
    key: tuple | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # what a job must share with others to be stacked with them (None: never stacked)
        if self.fn is None and batchable(self.model):
            self.key = (id(self.model), self.x.shape[1:], self.x.dtype.str)


def batchable(model: Any) -> bool:
    """True when the model's first input has a dynamic batch dimension."""
    inputs = model.runner.inputs
    return bool(inputs) and not isinstance(inputs[0].shape[0], int)


class Batcher:
    """``workers`` threads running :class:`Job` s, stacking predictions up to ``max_batch`` rows.

    Args:
        workers: inference threads.
        max_batch: most rows in one runner call (1: no stacking).
        wait_ms: how long a worker holding fewer than ``max_batch`` rows waits for more before
            it runs them (0: run what is queued now; waiting trades latency for larger batches).
    """

    def __init__(self, workers: int, max_batch: int = 1, wait_ms: float = 0.0):
        if workers < 1 or max_batch < 1 or wait_ms < 0:
            raise ValueError(f"workers and max_batch must be >= 1 and wait_ms >= 0 (got "
                             f"{workers}, {max_batch}, {wait_ms})")
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000.0
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0  # runner calls made for predictions, and the rows they held
        self.rows = 0
        self.workers = workers
        self._threads: list[threading.Thread] = []  # started by the first job
        self._idle = 0  # workers waiting for a job

    def put(self, job: Job) -> None:
        """Queue ``job``; RuntimeError once :meth:`close` was called."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if not self._threads:
                self._threads = [threading.Thread(target=self._work, name=f"ec-infer-{i}",
                                                  daemon=True) for i in range(self.workers)]
                for t in self._threads:
                    t.start()
            self._jobs.append(job)
            self._cv.notify()

    def close(self) -> None:
        """Finish the queued jobs, then stop the workers."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            threads = self._threads
        for t in threads:
            t.join()

    # -- worker side ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            t0 = time.perf_counter()
            if batch[0].fn is not None:
                results, rows = [_call(batch[0].fn, *batch[0].args)], 0
            else:
                results, rows = self._predict(batch)
            seconds = time.perf_counter() - t0
            for job in batch:
                if job.done is not None:
                    job.done(seconds)
            try:
                batch[0].loop.call_soon_threadsafe(_deliver, batch, results, seconds, rows)
            except RuntimeError:  # the event loop is closed: nobody waits for these any more
                pass

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs:
                if self._closed:
                    return None
                self._idle += 1
                self._cv.wait()
                self._idle -= 1
            batch = [self._jobs.popleft()]
            key = batch[0].key
            if key is None or self.max_batch == 1:
                return batch
            rows = len(batch[0].x)
            rows = self._stack(batch, key, rows)
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch and self.wait_s > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cv.wait(left):
                    break
                rows = self._stack(batch, key, rows)
            return batch

    def _stack(self, batch: list[Job], key: tuple, rows: int) -> int:
        """Move queued jobs that fit ``key`` and the row budget into ``batch`` (oldest first),
        leaving one for each idle worker: two requests side by side on two cores finish sooner
        than stacked on one (stacking them anyway measured ~25 % fewer requests/s at
        concurrency 2 on 2 cores)."""
        keep: list[Job] = []
        for _ in range(len(self._jobs) - self._idle):
            job = self._jobs.popleft()
            if job.key == key and rows + len(job.x) <= self.max_batch:
                batch.append(job)
                rows += len(job.x)
            else:
                keep.append(job)
        self._jobs.extendleft(reversed(keep))  # back in front, in their order
        if self._jobs and self._idle:  # the wake-up may have come to us, not to them
            self._cv.notify(min(self._idle, len(self._jobs)))
        return rows

    def _predict(self, batch: list[Job]) -> tuple[list[tuple[bool, Any]], int]:
        """Per job (succeeded, output or exception), and the rows of the stacked call."""
        model, sizes = batch[0].model, [len(job.x) for job in batch]
        self.batches += 1
        self.rows += sum(sizes)
        if len(batch) == 1:
            return [_call(model.run, batch[0].x)], sizes[0]
        ok, out = _call(lambda: model.run(np.concatenate([job.x for job in batch])))
        if not ok or len(out) != sum(sizes):  # rerun each alone: only the cause fails
            return [_call(model.run, job.x) for job in batch], sum(sizes)
        return [(True, part) for part in np.split(out, np.cumsum(sizes)[:-1])], sum(sizes)


def _call(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed to the request that asked, not swallowed
        return False, exc


def _deliver(batch: list[Job], results: list[tuple[bool, Any]], seconds: float,
             rows: int) -> None:
    """On the event loop: settle each request's future (one whose client left is skipped).

    A prediction's result is ``(output, seconds of the runner call, rows in that call)``."""
    for job, (ok, value) in zip(batch, results):
        if job.future.done():
            continue
        if not ok:
            job.future.set_exception(value)
        else:
            job.future.set_result(value if job.fn is not None else (value, seconds, rows))
