"""One runner shared by 8 threads gives exactly the outputs of sequential calls, per format."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgecompress as ec

THREADS, CALLS = 8, 200
FORMATS = {"onnx": "m.onnx", "tflite": "m.tflite", "torchscript": "m.ptl", "ncnn": "m_ncnn",
           "torch": "m.ecm"}


@pytest.fixture(scope="module")
def artifacts(tiny_dm, tmp_path_factory):
    out = tmp_path_factory.mktemp("threads")
    paths = {}
    for fmt, name in FORMATS.items():
        if not ec.formats.get_format(fmt).available():
            continue
        paths[fmt] = tiny_dm.export(fmt, out / name, benchmark_runs=0, parity_samples=16).path
    return paths


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
