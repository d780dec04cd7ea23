"""MobileNet-style blocks in the simulated INT8 model: ReLU6 fused as ORT fuses it, and a zero
Pad sharing its input's quantizer (Keras' ZeroPadding2D before stride-2 depthwise convs).

Before these, a random-init keras.applications MobileNetV2 differed from its ONNX INT8 file by
twice as much as ONNX Runtime's own QDQ graph differs from its integer kernels.
"""

from __future__ import annotations

import torch
from torch import nn

import edgecompress as ec
from edgecompress.quant.fakequant import fused_activation
from edgecompress.quant.sharing import output_modes, share_quantizers
from edgecompress.quant.simulate import wrap
from edgecompress.training import TrainConfig, cross_entropy_loss, train


class TinyMobileNet(nn.Module):
    """Conv-BN-ReLU6, then an explicit zero pad and a stride-2 depthwise conv (as Keras writes
    MobileNetV2), a pointwise conv and a classifier."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU6())
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False),
                                nn.BatchNorm2d(2 * width), nn.ReLU6())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.pad(self.stem(x)))))


def _plain() -> nn.Module:
    model = TinyMobileNet().eval()
    for seq in (model.stem, model.dw, model.pw):
        seq[1] = nn.Identity()  # as after BatchNorm folding
    return model


def test_relu6_is_fused_into_the_layer_before_it():
    model = _plain()
    modes = output_modes(model, ["stem.0", "dw.0", "pw.0", "head.2"])
    assert modes == {"stem.0": "relu6", "dw.0": "relu6", "pw.0": "relu6", "head.2": "plain"}
    y = torch.tensor([-3.0, 2.0, 9.0])
    assert fused_activation(y, "relu6").tolist() == [0.0, 2.0, 6.0]
    assert fused_activation(y, "plain").tolist() == y.tolist()


def test_a_zero_pad_reads_its_producers_quantizer():
    sim, version = share_quantizers(wrap(_plain(), per_channel=True, skip=set()))
    assert version >= 2
    modules = dict(sim.named_modules())
    # one quantization of the padded map: the stem's output quantizer, not a second one
    assert modules["dw.0"].act_in is modules["stem.0"].act_out


def test_depthwise_relu6_int8_onnx_passes_parity_with_int8_kernels(digits, tmp_path):
    torch.manual_seed(0)
    model = TinyMobileNet()
    train(model, digits.train, cross_entropy_loss, TrainConfig(epochs=1, lr=3e-3))
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(model.eval(), digits)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    m = art.metrics()
    assert m.parity_ok, art.notes.get("verification")
    assert art.notes["ort_kernels"].get("QLinearConv", 0) == 3  # the depthwise conv among them
    assert m.top1_agreement >= 0.98
