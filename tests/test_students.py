"""Student builders: torchvision and local models adapted to the data's channels, size, classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.errors import ConfigError, DataError
from edgecompress.students import (
    NAMES,
    TORCHVISION_STUDENTS,
    build,
    torchvision_student,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", TORCHVISION_STUDENTS)
def test_every_torchvision_student_runs_on_small_grayscale_digits(name, digits):
    model = build(name, digits)
    x, _ = next(iter(digits.val))
    with torch.no_grad():
        out = model.eval()(x[:4])
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    conv = _first_conv(model)
    assert conv.in_channels == 1
    assert conv.stride == (1, 1)  # 16×16 input: the stem keeps full resolution


def test_resnet_student_on_three_channel_28px_drops_the_stem_downsampling():
    data = ec.data.digits(image_size=28, channels=3)
    model = build("resnet18", data)
    assert model.conv1.in_channels == 3 and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10


def test_large_inputs_keep_the_imagenet_stem():
    model = torchvision_student("shufflenet_v2_x0_5", in_channels=3, num_classes=7, image_size=128)
    assert _first_conv(model).stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 128, 128)).shape == (1, 7)


def test_width_options_reach_the_builder(digits):
    narrow = build("mobilenet_v3_small", digits, width_mult=0.5)
    wide = build("mobilenet_v3_small", digits)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    small = build("small_cnn", digits, width=4)
    assert small.classifier.in_features == 16


def test_names_list_is_complete():
    assert "mobilenet_v3_small" in NAMES and "small_cnn" in NAMES


def test_bad_requests_fail_clearly(digits):
    with pytest.raises(ConfigError, match="unknown student 'vgg99'"):
        build("vgg99", digits)
    with pytest.raises(ConfigError, match="width_mult"):
        build("resnet18", digits, width_mult=0.5)
    flat = ec.DataBundle(val=[(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(DataError, match=r"image data \(N, C, H, W\)"):
        build("mobilenet_v3_small", flat)
    no_classes = ec.DataBundle(val=[(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(DataError, match="num_classes"):
        build("small_cnn", no_classes)
