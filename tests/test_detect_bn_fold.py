"""BatchNorm folding in models torch.fx cannot trace as a whole (YOLO's C2f blocks iterate over
a chunk): the Conv + BN blocks inside are still folded, and QAT's learned output ranges are
ranges of the tensor the ONNX graph quantizes (after the BN), so the INT8 file agrees with
its simulated model. Before: nothing was folded, QAT trained each Conv's output range before
its BN and the export wrote those ranges onto the folded (post-BN) tensors (YOLOv8n after 4
QAT batches: detection agreement 30.8 %, issue #24)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.fold import fold_batchnorm


class ConvBnAct(nn.Module):
    """Ultralytics' Conv: act(bn(conv(x))) as attributes, not an nn.Sequential."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SplitBlock(nn.Module):
    """C2f's pattern: iterating over a chunk, which torch.fx cannot trace."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = ConvBnAct(c, c)
        self.m = nn.ModuleList([ConvBnAct(c // 2, c // 2)])
        self.cv2 = ConvBnAct(c + c // 2, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class TwoReaders(nn.Module):
    """A Conv whose output is also returned: its BN cannot be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def untraceable_net(two_readers: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    middle = [TwoReaders()] if two_readers else []
    net = nn.Sequential(ConvBnAct(1, 8, 2), SplitBlock(8), *middle, nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10))
    # BatchNorms far from identity, so quantizing before or after them differs
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 3.0)
        bn.bias.data.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.01, 0.1)
    return net.eval()


def test_the_net_is_untraceable_as_a_whole():
    with pytest.raises(torch.fx.proxy.TraceError, match="cannot be iterated"):
        torch.fx.symbolic_trace(untraceable_net())


def test_conv_bn_blocks_inside_an_untraceable_model_are_folded():
    net = untraceable_net()
    x = torch.rand(4, 1, 16, 16)
    before = net(x)
    assert fold_batchnorm(net) == 4  # stem, cv1, m.0, cv2; not the conv read twice
    assert torch.allclose(net(x), before, atol=1e-5)
    assert isinstance(net[2].bn, nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1


def test_qat_on_an_untraceable_model_agrees_with_its_onnx_file(digits, tmp_path):
    qat = ec.passes.QuantizeQAT(samples=64, freeze_bn_after=0, per_channel=True,
                                finetune=ec.FineTune(epochs=1, lr=1e-4, max_batches=4))
    dm = ec.Pipeline([qat], measure=False, seed=0).run(untraceable_net(two_readers=False), digits)
    recipe = dm.quant_recipe
    # the Conv outputs a BN followed during training were calibrated after the fold, as ORT does
    assert "0.conv:out" in recipe.calibrated_after_training
    assert "0.conv:out" not in [k for k in recipe.ranges if k not in recipe.calibrated_after_training]
    art = dm.export("onnx", tmp_path / "qat.onnx", benchmark_runs=0)
    assert art.parity.passed, art.parity
