"""TFLite export: litert-torch conversion, ai-edge-quantizer fp16/INT8, LiteRT runner, bad files.

Every artifact here is run by the real LiteRT interpreter (ai_edge_litert) on digits.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.export.tflite import inspect_tflite
from edgecompress.measure import count_params

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

FAST = {"benchmark_runs": 0, "accuracy_samples": 128}


@pytest.fixture(scope="module")
def float_dm(_cnn_weights, digits):
    return ec.Pipeline([ec.passes.Fuse()], measure=False).run(copy.deepcopy(_cnn_weights), digits)


@pytest.fixture(scope="module")
def fp32(float_dm, tmp_path_factory):
    return float_dm.export("tflite", tmp_path_factory.mktemp("tfl") / "m.tflite", **FAST)


@pytest.fixture(scope="module")
def ptq_dm(_cnn_weights, digits):
    return ec.Pipeline([ec.passes.QuantizePTQ(samples=128)], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)


def test_fp32_matches_torch_through_litert(fp32, float_dm, digits):
    assert fp32.precision == "fp32" and fp32.parity.passed
    assert fp32.parity.max_abs_diff <= 1e-4 and fp32.parity.top1_agreement == 1.0
    runner = ec.load(fp32.path, threads=1)
    assert runner.xnnpack and not runner.int8_io
    # litert-torch keeps the torch NCHW layout at the model's input: same array as torch takes
    assert runner.inputs[0].shape == (1, 1, 16, 16) and runner.inputs[0].dtype == "float32"
    x, _ = next(iter(digits.val))
    ref = float_dm.model(x).detach().numpy()
    out = runner(x.numpy())  # 64 samples through a batch-1 model: the base runner splits them
    assert out.shape == (64, 10) and np.abs(ref - out).max() <= 1e-4
    assert fp32.accuracy > 0.9


def test_fp32_metadata_sidecar(fp32):
    meta = json.loads(fp32.path.with_name("m.tflite.json").read_text())
    assert meta["precision"] == "fp32" and meta["io_layout"] == "NCHW"
    assert meta["input"]["shape"] == [1, 1, 16, 16]
    assert meta["weight_dtypes"] == {"float32": 6}
    assert meta["parity"]["passed"] is True
    assert len(meta["weights_sha256"]["m.tflite"]) == 64
    assert ec.load(fp32.path).metadata["format"] == "tflite"


def test_fp16_weights_halve_the_file(float_dm, fp32, tmp_path):
    art = float_dm.export("tflite", tmp_path / "h.tflite", fp16=True, **FAST)
    assert art.precision == "fp16" and art.parity.passed
    facts = inspect_tflite(art.path)
    assert facts["weight_dtypes"] == {"float16": 6}
    assert facts["io_dtypes"] == {"input": "float32", "output": "float32"}
    assert art.size_bytes < 0.6 * fp32.size_bytes


def test_int8_static_has_int8_weights_and_kernels(ptq_dm, fp32, tmp_path):
    art = ptq_dm.export("tflite", tmp_path / "q.tflite", **FAST)
    assert art.precision == "int8-static"
    assert art.parity.passed and art.parity.top1_agreement >= 0.98  # vs the simulated model
    assert art.parity.reference.startswith("simulated INT8 torch model")
    # LiteRT's kernels take 8-bit weights: a 7-bit (reduce_range) recipe is checked at 8 bits
    assert ("with 8-bit weights" in art.parity.reference) == ptq_dm.quant_recipe.reduce_range
    assert art.notes["weight_dtypes"] == {"int8": 6}
    assert art.notes["kernel_input_dtypes"] == {"int8": 6}
    assert art.notes["io_dtypes"] == {"input": "float32", "output": "float32"}
    assert art.size_bytes < 0.45 * fp32.size_bytes
    assert art.accuracy > 0.9


def test_compact_names_shrink_the_file_and_keep_its_outputs_and_signature(ptq_dm, digits,
                                                                          tmp_path):
    short = ptq_dm.export("tflite", tmp_path / "short.tflite", **FAST)
    long = ptq_dm.export("tflite", tmp_path / "long.tflite", compact_names=False, **FAST)
    # litert-torch names each tensor after its module path; measured: 49,232 → 44,080 bytes
    assert short.notes["tensors_renamed"] > 10 and "tensors_renamed" not in long.notes
    assert short.size_bytes < long.size_bytes - 2000, (short.size_bytes, long.size_bytes)
    x, _ = next(iter(digits.val))
    assert np.array_equal(ec.load(short.path)(x.numpy()), ec.load(long.path)(x.numpy()))
    assert inspect_tflite(short.path)["signature_inputs"] == inspect_tflite(long.path)["signature_inputs"]


def test_int8_activation_ranges_cover_every_calibration_sample(ptq_dm, tmp_path):
    # ai-edge-quantizer's default moving average of per-image ranges clipped large logits
    art = ptq_dm.export("tflite", tmp_path / "r.tflite", **FAST)
    calib = ptq_dm.quant_recipe.calib_samples
    with torch.no_grad():
        expected = ptq_dm.model(calib).abs().max().item()
    got = np.abs(ec.load(art.path)(calib.numpy())).max()
    assert got >= 0.97 * expected, (got, expected)
    assert art.notes["activation_ranges"].endswith("min/max over all calibration samples "
                                                   "for the rest")


def test_int8_static_takes_the_recipes_activation_ranges(ptq_dm, tmp_path):
    # ai-edge-quantizer would calibrate its own min/max; the recipe's percentile ranges (or
    # QAT's learned ones) must reach every TFLite tensor that holds a recipe-covered activation
    from edgecompress.export.tflite import convert_float
    from edgecompress.export.tflite_ranges import recipe_tensor_ranges
    from edgecompress.runtime.litert import LiteRTRunner

    # long names: the float file's tensor names find the same tensors in the INT8 file
    art = ptq_dm.export("tflite", tmp_path / "q.tflite", compact_names=False, **FAST)
    recipe = ptq_dm.quant_recipe
    float_path = tmp_path / "float.tflite"
    convert_float(ptq_dm.float_model.eval(), ptq_dm.example_input(1), float_path)
    matched = recipe_tensor_ranges(ptq_dm.model, recipe.calib_samples[:1], float_path)
    # 8: a max-pool output holds no quantization of its own (it keeps its input's scale)
    assert art.notes["recipe_ranges_imported"] == len(matched) >= 8
    scales = {d["name"]: d["quantization_parameters"]["scales"]
              for d in LiteRTRunner(art.path).interpreter.get_tensor_details()}
    exact = []
    for name, (lo, hi) in matched.items():
        if len(scales[name]) == 0 or "MaxPool" in name:
            continue  # float input (int8_io=False); max-pool outputs keep their input's scale
        assert scales[name] == pytest.approx([(max(hi, 0.0) - min(lo, 0.0)) / 255], rel=1e-5), name
        exact.append(name)
    assert len(exact) >= 6  # 8 with litert-torch 0.10

    own = ptq_dm.export("tflite", tmp_path / "own.tflite", recipe_ranges=False,
                        compact_names=False, **FAST)
    assert "recipe_ranges_imported" not in own.notes
    assert own.notes["activation_ranges"].endswith("(recipe_ranges=False)")
    own_scales = {d["name"]: d["quantization_parameters"]["scales"]
                  for d in LiteRTRunner(own.path).interpreter.get_tensor_details()}
    assert any(own_scales[n] != pytest.approx(scales[n], rel=1e-3) for n in exact)


def test_int8_io_runner_quantizes_and_dequantizes(ptq_dm, digits, tmp_path):
    art = ptq_dm.export("tflite", tmp_path / "q8.tflite", int8_io=True, **FAST)
    assert art.notes["io_dtypes"] == {"input": "int8", "output": "int8"}
    assert art.parity.passed and art.parity.top1_agreement >= 0.98
    runner = ec.load(art.path)
    raw = ec.load(art.path, raw=True)
    assert runner.int8_io and runner.inputs[0].dtype == "float32"
    assert raw.inputs[0].dtype == "int8" and raw.outputs[0].dtype == "int8"
    x = digits.samples("val", 16).numpy()
    (s_in, z_in), (s_out, z_out) = raw._in[0]["quantization"], raw._out[0]["quantization"]
    q = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
    raw_out = raw(q)
    assert raw_out.dtype == np.int8
    np.testing.assert_allclose(runner(x), (raw_out.astype(np.float32) - z_out) * s_out, rtol=1e-6)
    with pytest.raises(ec.InputError, match="int8"):
        raw(x)  # raw mode takes the model's own int8 tensors only


def test_int8_dynamic_quantizes_linear_weights(float_dm, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizeDynamic(layers=["Linear"])], measure=False).run(
        float_dm.model, digits)
    art = dm.export("tflite", tmp_path / "d.tflite", **FAST)
    assert art.precision == "int8-dynamic" and art.parity.passed
    # the classifier's weights are int8; activations stay float (kernels take float inputs)
    assert art.notes["weight_dtypes"] == {"float32": 5, "int8": 1}
    assert art.notes["kernel_input_dtypes"] == {"float32": 6}


def test_option_conflicts_are_refused(float_dm, ptq_dm, tmp_path):
    with pytest.raises(ec.ConfigError, match="int8_io"):
        float_dm.export("tflite", tmp_path / "a.tflite", int8_io=True)
    with pytest.raises(ec.ConfigError, match="fp16"):
        ptq_dm.export("tflite", tmp_path / "b.tflite", fp16=True)
    assert not list(tmp_path.glob("*.tflite"))


def test_runner_validates_inputs(fp32):
    runner = ec.load(fp32.path)
    with pytest.raises(ec.InputError, match="dimension 2 must be 16"):
        runner(np.zeros((1, 1, 8, 16), np.float32))
    with pytest.raises(ec.InputError, match="dtype float64"):
        runner(np.zeros((1, 1, 16, 16)))


def test_modified_file_is_refused(fp32, tmp_path):
    path = tmp_path / "m.tflite"
    data = bytearray(fp32.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    path.with_name("m.tflite.json").write_text(fp32.path.with_name("m.tflite.json").read_text())
    with pytest.raises(ec.ArtifactError, match="sha256"):
        ec.load(path)


def test_truncated_and_foreign_files_are_refused(fp32, tmp_path):
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(fp32.path.read_bytes()[:4000])
    with pytest.raises(ec.ArtifactError, match="truncated or corrupt"):
        ec.load(truncated)
    foreign = tmp_path / "f.tflite"
    foreign.write_bytes(b"PK\x03\x04 not a flatbuffer")
    with pytest.raises(ec.ArtifactError, match="TFL3"):
        ec.load(foreign)


def test_wrong_suffix_is_refused(float_dm, fp32, tmp_path):
    with pytest.raises(ec.ConfigError, match=r"\.tflite"):
        float_dm.export("tflite", tmp_path / "m.tfl")
    odd = tmp_path / "m.tfl"
    odd.write_bytes(fp32.path.read_bytes())
    with pytest.raises(ec.ArtifactError, match="cannot tell the format"):
        ec.load(odd)


def test_structured_pruned_model_exports_with_parity(_cnn_weights, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3), ec.passes.Fuse()], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)
    assert count_params(dm.model) < 0.75 * count_params(_cnn_weights)  # channels really removed
    art = dm.export("tflite", tmp_path / "p.tflite", **FAST)
    assert art.parity.passed and art.parity.max_abs_diff <= 1e-4
    assert inspect_tflite(art.path)["input_shape"] == [1, 1, 16, 16]
