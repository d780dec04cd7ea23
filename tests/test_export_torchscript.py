"""TorchScript-mobile export: lite-interpreter files, FX static INT8, dynamic INT8, bad files.

Every artifact is run by torch's real lite interpreter (``_load_for_lite_interpreter``).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from torch import nn

import edgecompress as ec
from edgecompress.measure import count_params
from edgecompress.quant.simulate import cpu_has_vnni

FAST = {"benchmark_runs": 0, "accuracy_samples": 128}


@pytest.fixture(scope="module")
def float_dm(_resnet_weights, digits):
    return ec.Pipeline([], measure=False).run(copy.deepcopy(_resnet_weights), digits)


@pytest.fixture(scope="module")
def fp32(float_dm, tmp_path_factory):
    return float_dm.export("torchscript", tmp_path_factory.mktemp("ts") / "m.ptl", **FAST)


@pytest.fixture(scope="module")
def ptq_dm(_resnet_weights, digits):
    return ec.Pipeline([ec.passes.QuantizePTQ(samples=128)], measure=False).run(
        copy.deepcopy(_resnet_weights), digits)


def test_fp32_lite_interpreter_matches_torch(fp32, float_dm, digits):
    assert fp32.precision == "fp32" and fp32.parity.passed
    assert fp32.parity.max_abs_diff <= 1e-4 and fp32.parity.top1_agreement == 1.0
    assert fp32.notes["capture"] == "trace" and fp32.notes["conv_bn_folded"] == 9
    runner = ec.load(fp32.path, threads=1)
    assert runner.inputs[0].shape == (None, 1, 16, 16)  # any batch
    x = digits.samples("val", 5)
    np.testing.assert_allclose(runner(x.numpy()), float_dm.model(x).detach().numpy(), atol=1e-4)


def test_metadata_records_optimize_for_mobile(fp32):
    import torch.backends.xnnpack

    meta = json.loads(fp32.path.with_name("m.ptl.json").read_text())
    assert len(meta["weights_sha256"]["m.ptl"]) == 64
    assert meta["input"]["shape"] == [1, 1, 16, 16] and meta["parity"]["passed"] is True
    if torch.backends.xnnpack.enabled:
        assert meta["optimize_for_mobile"] == "applied"
    else:
        assert meta["optimize_for_mobile"].startswith("skipped: this torch build")


def test_int8_static_with_residual_adds(ptq_dm, tmp_path):
    art = ptq_dm.export("torchscript", tmp_path / "q.ptl", **FAST)
    assert art.precision == "int8-static" and art.notes["quant_engine"] == "x86"
    assert art.parity.passed and art.parity.top1_agreement >= 0.98  # vs the simulated model
    assert art.notes["int8_layers"] == 10  # 9 convs and the classifier hold qint8 weights
    assert art.accuracy > 0.85
    runner = ec.load(art.path)
    assert runner.engine == "x86"  # taken from the file's metadata
    assert runner(np.zeros((3, 1, 16, 16), np.float32)).shape == (3, 10)


def test_int8_static_takes_the_recipes_activation_ranges(ptq_dm, digits):
    # torch's HistogramObserver would pick other ranges than the recipe's percentile; the .ptl
    # must quantize every covered layer output exactly as the simulated model does
    import torch

    from edgecompress.export.torchscript import quantize_static_fx, quantized_engine

    recipe = ptq_dm.quant_recipe
    with quantized_engine("qnnpack"):
        quantized, imported = quantize_static_fx(ptq_dm.float_model, recipe, "qnnpack",
                                                 digits.samples("train", 64), [])
    modules = dict(quantized.named_modules())
    outs = {k[:-4]: v for k, v in recipe.ranges.items() if k.endswith(":out") and k[:-4] in modules}
    assert imported >= len(outs) >= 9
    for layer, (lo, hi) in outs.items():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255
        assert modules[layer].scale == pytest.approx(scale, rel=1e-5), layer
        # -lo/scale can land on .5 (a range symmetric about 0): torch and numpy may round apart
        assert abs(modules[layer].zero_point - (-lo / scale)) <= 0.5 + 1e-3, layer
    assert isinstance(quantized(digits.samples("val", 4)), torch.Tensor)


def test_qat_recipe_exports_with_its_learned_ranges(_resnet_weights, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizeQAT(epochs=1)], measure=False).run(
        copy.deepcopy(_resnet_weights), digits)
    art = dm.export("torchscript", tmp_path / "qat.ptl", **FAST)
    assert art.precision == "int8-static" and art.notes["recipe_ranges_imported"] >= 10
    assert art.parity.passed and art.parity.top1_agreement >= 0.97  # vs the QAT-simulated model


@pytest.mark.parametrize("reduce_range", [True, False])
def test_x86_activation_bits_follow_the_recipes_reduce_range(_resnet_weights, digits, tmp_path,
                                                             reduce_range):
    # 7-bit activations only where the recipe asks for them (CPUs without VNNI): on the
    # pretrained CIFAR ResNet-20 they cost 2 points of agreement with the 8-bit simulation
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64, reduce_range=reduce_range)],
                     measure=False).run(copy.deepcopy(_resnet_weights), digits)
    art = dm.export("torchscript", tmp_path / "q.ptl", on_parity_fail="keep", **FAST)
    assert ("7-bit activations" in art.notes["quantizer"]) is reduce_range
    if reduce_range or cpu_has_vnni():
        assert art.parity.passed, str(art.parity)
    else:  # 8-bit activations saturate fbgemm's u8s8 kernels on CPUs without VNNI (this one)
        assert art.parity.top1_agreement >= 0.9, str(art.parity)


def test_int8_static_for_arm_engine_and_skip(_resnet_weights, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64, skip=["fc"], backend="arm")],
                     measure=False).run(copy.deepcopy(_resnet_weights), digits)
    art = dm.export("torchscript", tmp_path / "arm.ptl", **FAST)
    assert art.notes["quant_engine"] == "qnnpack" and art.notes["float_layers"] == ["fc"]
    assert art.notes["int8_layers"] == 9
    assert art.parity.passed


def test_int8_dynamic(float_dm, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizeDynamic(layers=["Linear"])], measure=False).run(
        float_dm.model, digits)
    art = dm.export("torchscript", tmp_path / "d.ptl", **FAST)
    assert art.precision == "int8-dynamic" and art.notes["int8_layers"] == 1
    assert art.parity.passed and art.parity.top1_agreement == 1.0


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it for static quantization."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_untraceable_model_is_refused_for_static_int8(digits, tmp_path):
    model = Branchy().eval()
    dm = ec.Pipeline([], measure=False).run(model, digits)
    dm.quant_recipe = ec.StaticRecipe(calib_samples=digits.samples("train", 32))
    dm.float_model = dm.model
    with pytest.raises(ec.ExportError, match="torch.fx cannot trace Branchy"):
        dm.export("torchscript", tmp_path / "b.ptl", **FAST)
    assert not (tmp_path / "b.ptl").exists()


def test_unknown_engine_is_refused(ptq_dm, tmp_path):
    with pytest.raises(ec.ConfigError, match="engine"):
        ptq_dm.export("torchscript", tmp_path / "e.ptl", engine="tpu")


def test_modified_file_is_refused(fp32, tmp_path):
    path = tmp_path / "m.ptl"
    data = bytearray(fp32.path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    path.with_name("m.ptl.json").write_text(fp32.path.with_name("m.ptl.json").read_text())
    with pytest.raises(ec.ArtifactError, match="sha256"):
        ec.load(path)


def test_truncated_and_foreign_files_are_refused(fp32, tmp_path):
    truncated = tmp_path / "t.ptl"
    truncated.write_bytes(fp32.path.read_bytes()[:3000])
    with pytest.raises(ec.ArtifactError, match="truncated or corrupt"):
        ec.load(truncated)
    foreign = tmp_path / "f.ptl"
    foreign.write_bytes(b"TFL3 not a zip")
    with pytest.raises(ec.ArtifactError, match="not a zip"):
        ec.load(foreign)


def test_wrong_suffix_and_bad_input(float_dm, fp32, tmp_path):
    with pytest.raises(ec.ConfigError, match=r"\.ptl"):
        float_dm.export("torchscript", tmp_path / "m.pt")
    runner = ec.load(fp32.path)
    with pytest.raises(ec.InputError, match="dimension 1 must be 1"):
        runner(np.zeros((2, 3, 16, 16), np.float32))


def test_structured_pruned_model_exports_with_parity(_resnet_weights, digits, tmp_path):
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=False).run(
        copy.deepcopy(_resnet_weights), digits)
    assert count_params(dm.model) < 0.75 * count_params(_resnet_weights)
    art = dm.export("torchscript", tmp_path / "p.ptl", **FAST)
    assert art.parity.passed and art.parity.max_abs_diff <= 1e-4
