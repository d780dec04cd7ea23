"""Regressions found by benchmarks/model_zoo.py (random-init models from timm, torchvision,
transformers, Ultralytics), each reduced to a tiny model that runs in seconds."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.errors import ConfigError

FAST = {"benchmark_runs": 0, "parity_samples": 32}


def _images(n: int = 32) -> ec.DataBundle:
    x = torch.rand((n, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    return ec.DataBundle(val=[x[i:i + 8] for i in range(0, n, 8)])


def test_near_constant_logits_int8_bound_is_a_step_of_their_value(tmp_path):
    # timm's random-init EfficientNet gives logits that differ by ~1e-12 across samples: their
    # range / 255 made the INT8 bound ~4e-15 and refused a faithful dynamic INT8 file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[3].weight.mul_(1e-9)
        model[3].bias.uniform_(0.1, 0.2)
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())
    art = dm.export("onnx", tmp_path / "m.onnx", **FAST)
    (out,) = art.parity.outputs
    assert art.parity.passed, art.parity
    # the step of an INT8 range that holds 0 and the logits (≤ 0.2): a real, not vanishing, bound
    assert 0.1 / 255 < out["step"] <= 0.2 / 255


def test_timm_linear_subclass_is_quantized_dynamically(tmp_path):
    # timm's MobileNetV3 / LCNet / GhostNet classifiers are timm.layers.Linear (an nn.Linear
    # subclass): QuantizeDynamic found "no Linear layer" and refused
    timm_layers = pytest.importorskip("timm.layers")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), timm_layers.Linear(192, 32), nn.ReLU(),
                          timm_layers.Linear(32, 10)).eval()
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())
    assert sum(isinstance(m, DynamicLinear) for m in dm.model.modules()) == 2
    art = dm.export("onnx", tmp_path / "m.onnx", **FAST)
    assert art.parity.passed and art.precision == "int8-dynamic", art.parity
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert ops.count("MatMulInteger") == 2


def test_dynamic_int8_of_a_conv_only_net_says_to_use_static_int8():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(ConfigError, match="no Linear/LSTM/GRU layer .* use QuantizePTQ"):
        ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())
