"""One runner shared by 8 threads gives exactly the outputs of sequential calls, per format."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgecompress as ec

from .conftest import FORMATS

THREADS, CALLS = 8, 200


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_shared_runner_equals_sequential_calls(artifacts, fmt):
    if fmt not in artifacts:
        pytest.skip(f"{fmt} is not installed here")
    runner = ec.load(artifacts[fmt], threads=1)
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((THREADS, CALLS, 1, 1, 16, 16)).astype(np.float32)
    expected = np.stack([np.stack([runner(x) for x in per_thread]) for per_thread in inputs])
    got = np.zeros_like(expected)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(CALLS):
                got[t, i] = runner(inputs[t, i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert np.array_equal(got, expected)
