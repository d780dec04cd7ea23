"""ONNX export: parity through ONNX Runtime, metadata, opsets, atomic writes, honest refusals."""

import json

import numpy as np
import onnx
import pytest
import torch

import edgecompress as ec
from edgecompress.training import accuracy


@pytest.fixture()
def fused(trained_cnn, digits):
    return ec.Pipeline([ec.passes.Fuse()], measure=False).run(trained_cnn, digits)


def test_onnx_artifact_matches_torch_on_all_val(fused, digits, tmp_path):
    art = fused.export("onnx", tmp_path / "m.onnx", benchmark_runs=5)
    assert art.parity.passed and art.parity.max_abs_diff <= 1e-4
    runner = ec.load(art.path, threads=1)
    agree = total = 0
    max_diff = 0.0
    for x, _ in digits.val:
        ref = fused.model(x).detach().numpy()
        out = runner(x.numpy())
        max_diff = max(max_diff, float(np.abs(ref - out).max()))
        agree += int((ref.argmax(1) == out.argmax(1)).sum())
        total += len(x)
    assert max_diff <= 1e-4 and agree == total == 359
    assert art.accuracy == pytest.approx(accuracy(fused.model, digits.val))
    assert art.size_bytes == art.path.stat().st_size
    assert art.latency.p50_ms > 0
    assert fused.report.artifacts[-1].format == "onnx"


def test_metadata_travels_in_metadata_props(fused, tmp_path):
    art = fused.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    props = {p.key: p.value for p in onnx.load(str(art.path)).metadata_props}
    meta = json.loads(props["edgecompress"])
    assert meta["input"]["shape"] == [1, 1, 16, 16]
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["preprocess"]["layout"] == "NCHW"
    assert meta["history"] == ["fuse"]
    assert meta["parity"]["passed"] is True
    assert meta["edgecompress_version"] == ec.__version__
    assert len(props["edgecompress.weights_sha256"]) == 64
    assert ec.load(art.path).metadata["precision"] == "fp32"


@pytest.mark.parametrize("opset", [13, 14, 17])
def test_opsets_and_static_batch(fused, tmp_path, opset):
    art = fused.export("onnx", tmp_path / f"m{opset}.onnx", opset=opset, dynamic_batch=False,
                       benchmark_runs=0, parity_samples=8)
    assert onnx.load(str(art.path)).opset_import[0].version == opset
    runner = ec.load(art.path)
    assert runner.inputs[0].shape == (1, 1, 16, 16)
    assert runner(np.zeros((3, 1, 16, 16), np.float32)).shape == (3, 10)  # batched by the runner
    assert art.parity.passed


def test_bad_options_and_unknown_format(fused, tmp_path):
    with pytest.raises(ec.ConfigError, match="opset"):
        fused.export("onnx", tmp_path / "m.onnx", opset=9)
    with pytest.raises(ec.ConfigError, match="unknown option 'opset_version'"):
        fused.export("onnx", tmp_path / "m.onnx", opset_version=13)
    with pytest.raises(ec.ConfigError, match=r"unknown export format 'onxx'. Known formats: .*onnx"):
        fused.export("onxx", tmp_path / "m.onnx")
    with pytest.raises(ec.ConfigError, match=r"must end with \.onnx"):
        fused.export("onnx", tmp_path / "m.tflite")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_failed_export_leaves_no_file(digits, tmp_path):
    class NotExportable(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft2(x).abs().flatten(1)[:, :10]  # FFT has no ONNX opset-17 export

    dm = ec.Pipeline([], measure=False).run(NotExportable(), digits)
    with pytest.raises(ec.ExportError, match="could not export"):
        dm.export("onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_int8_recipe_is_refused_by_a_float_only_format(fused, tmp_path):
    fused.quant_recipe = ec.StaticRecipe()
    with pytest.raises(ec.ExportError, match="Formats that can: onnx"):
        fused.export("ncnn", tmp_path / "ncnn_out")
