"""Runners: input validation, corrupt and tampered files, benchmark statistics, system status."""

import numpy as np
import onnx
import pytest

import edgecompress as ec
from edgecompress.runtime.system import system_status


@pytest.fixture()
def onnx_path(fused_onnx):
    return fused_onnx


def test_runner_specs(onnx_path):
    r = ec.load(onnx_path, threads=1)
    assert r.format == "onnx"
    assert r.inputs[0].shape == (None, 1, 16, 16) and r.inputs[0].dtype == "float32"
    assert r.outputs[0].shape == (None, 10)
    assert r(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 10)


def test_wrong_shape_and_dtype_say_what_was_expected(onnx_path):
    r = ec.load(onnx_path)
    with pytest.raises(ec.InputError, match=r"expected \(N, 1, 16, 16\)"):
        r(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(ec.InputError, match="expected 4 dimensions"):
        r(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(ec.InputError, match="expected float32"):
        r(np.zeros((1, 1, 16, 16), np.float64))


def test_missing_truncated_and_corrupt_files(onnx_path, tmp_path):
    with pytest.raises(ec.ArtifactError, match="does not exist"):
        ec.load(tmp_path / "nope.onnx")
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    with pytest.raises(ec.ArtifactError, match="truncated or corrupt|not a readable ONNX"):
        ec.load(truncated)
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ec.ArtifactError):
        ec.load(garbage)
    unknown = tmp_path / "m.weird"
    unknown.write_bytes(b"x")
    with pytest.raises(ec.ArtifactError, match="cannot tell the format.*Known formats"):
        ec.load(unknown)


def test_tampered_weights_are_refused(onnx_path, tmp_path):
    model = onnx.load(str(onnx_path))
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ec.ArtifactError, match="do not match the sha256"):
        ec.load(bad)
    assert ec.load(bad, verify=False)(np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 10)


def test_benchmark_statistics_are_consistent(onnx_path):
    stats = ec.load(onnx_path, threads=1).benchmark(warmup=2, runs=25, batch_size=4)
    d = stats.to_dict()
    assert stats.runs == 25 and stats.batch_size == 4
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.fps == pytest.approx(4 * 1000 / stats.mean_ms)
    assert stats.peak_rss_mb > 50
    assert {"mean_ms", "p50_ms", "fps", "peak_rss_mb", "system"} <= set(d)
    with pytest.raises(ec.InputError):
        ec.load(onnx_path).benchmark(runs=0)


def test_system_status_reads_what_the_os_exposes():
    s = system_status()
    assert s["cpu_count"] >= 1
    assert s["memory"]["total_mb"] > s["memory"]["used_mb"] > 0
    assert 0 <= s["cpu_percent"] <= 100
