"""The simulated INT8 model computes what ONNX Runtime's integer kernels compute, bit for bit.

ORT runs a static INT8 QDQ file as QLinearConv / QLinearAdd / QLinearMul /
QLinearGlobalAveragePool / QGemm, whose arithmetic (int32 sums requantized by one float32
multiplier, fused multiply-adds on raw u8 values) is not the float graph the QDQ nodes describe;
and ORT calibrated the float graph again, a few float32 ulps away from the simulated model's
ranges. In a network that amplifies small perturbations (random-init MobileNetV2 / MobileNetV3 of
the model zoo) the file then differed from its simulation by 26-40 quantization steps. Now the
file carries the simulated model's scales and zero points, and the simulation the kernels'
arithmetic, so on a MobileNet-style block they agree exactly.
"""

from __future__ import annotations

import torch
from torch import nn

import edgecompress as ec
from edgecompress.fold import fold_batchnorm
from edgecompress.quant.sharing import output_modes


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))


class MobileBlockNet(nn.Module):
    """Stem (hard-swish), inverted residual (ReLU6 depthwise, squeeze-excite, linear projection,
    residual add), global average pooling and a classifier: the ops of MobileNetV2 / V3."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width,
                                          bias=False), nn.BatchNorm2d(2 * width), nn.ReLU6())
        self.se = SqueezeExcite(2 * width)
        self.project = nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False),
                                     nn.BatchNorm2d(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@torch.no_grad()
def _with_data_statistics(model: nn.Module, data: ec.DataBundle) -> nn.Module:
    """BatchNorm statistics from real batches (as a trained network has them; random-init
    statistics shrink every activation towards 0)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for i, (x, _) in enumerate(data.train):
        model(x)
        if i == 3:
            break
    return model.eval()


def test_int8_onnx_equals_its_simulation_bit_for_bit(digits, tmp_path):
    torch.manual_seed(0)
    model = _with_data_statistics(MobileBlockNet(), digits)
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(model, digits)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    kernels = art.notes["ort_kernels"]
    for op in ("QLinearConv", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QGemm"):
        assert kernels.get(op, 0) >= 1, kernels
    assert art.parity.passed, art.parity
    assert art.parity.max_abs_diff == 0.0, art.parity  # not a step apart anywhere
    written = art.notes["simulated_quantizers_written"]
    assert written["matched"] == written["quantizers"], written


def test_timm_batchnorm_act_is_folded_keeping_its_activation():
    from timm.layers import ConvNormAct

    block = ConvNormAct(3, 8, 3, act_layer=nn.Hardswish).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        before = block(x)
        assert fold_batchnorm(block) == 1
        after = block(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert isinstance(block.bn[1], nn.Hardswish)
    assert torch.allclose(before, after, atol=1e-5)


def test_a_linear_subclass_with_its_own_forward_gets_its_output_quantized():
    from timm.layers import Linear  # timm's classifier layer: nn.Linear with its own forward

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), Linear(4 * 6 * 6, 10)).eval()
    assert output_modes(model, ["0", "2"]) == {"0": "plain", "2": "plain"}


def test_files_saved_before_sharing_version_3_rebuild_with_the_quantizers_they_had():
    from edgecompress.quant.fakequant import ActQuant
    from edgecompress.quant.simulate import wrap
    from edgecompress.quant.sharing import SHARING_VERSION, share_quantizers

    def quantizers(version: int) -> set[str]:
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3)).eval()
        sim, applied = share_quantizers(wrap(model, per_channel=True, skip=set()), version)
        assert applied == version
        return {n for n, m in sim.named_modules() if isinstance(m, ActQuant)}

    assert SHARING_VERSION == 3
    before, now = quantizers(2), quantizers(3)
    assert before < now  # version 3 adds the sigmoid's output quantizer of SiLU = x·sigmoid(x)
    assert len(now - before) == 1, now - before
