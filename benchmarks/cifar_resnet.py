"""CIFAR-10 ResNet-20/56 (He et al. 2016, CIFAR variant) matching the pretrained state dicts in
``../shared/data/resnet-cifar10-pretrained`` (akamaster/pytorch_resnet_cifar10), and the MLPerf
Tiny ResNet-8 (read from its Keras file with ``ec.from_keras``) made to take the same input.

Option-A shortcuts: when a block changes shape the identity is subsampled with stride 2 and
zero-padded on the channel axis (no parameters). Inputs: RGB in [0, 1] normalised with mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), 32×32 NCHW. Shared by the benchmarks::

    from cifar_resnet import load_resnet, cifar_bundle
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = ShortcutA(cout // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ThreeStageNet(nn.Module):
    """Stem, three stages, average pool, linear: the forward both CIFAR ResNet families share."""

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    pool: nn.AdaptiveAvgPool2d
    linear: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out).flatten(1))


class CifarResNet(ThreeStageNet):
    def __init__(self, blocks: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)


def shortcut_as_conv(short: ShortcutA, cin: int) -> nn.Conv2d:
    """A fixed 1×1 stride-2 convolution equal to an option-A shortcut (subsample + zero-pad)."""
    cout = cin + 2 * short.pad
    conv = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(cin):
            conv.weight[short.pad + c, c, 0, 0] = 1.0
    return conv


def prunable(model: nn.Module) -> nn.Module:
    """Replace every option-A shortcut by its equivalent convolution (in place)."""
    for block in model.modules():
        if isinstance(getattr(block, "shortcut", None), ShortcutA):
            block.shortcut = shortcut_as_conv(block.shortcut, block.conv1.in_channels)
    return model


def resnet20() -> CifarResNet:
    return CifarResNet(3)


def resnet56() -> CifarResNet:
    return CifarResNet(9)


def load_resnet(weights: str | Path) -> CifarResNet:
    """Build ResNet-20 or -56 (from the number of blocks in the file) with its weights."""
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layer1."))
    model = CifarResNet(blocks)
    model.load_state_dict(state, strict=True)
    return model.eval()


def take_normalized_input(model: nn.Module) -> nn.Module:
    """Fold ``raw = 255 · (x · std + mean)`` into the first convolution (in place), so a
    model that takes raw 0..255 pixels (MLPerf Tiny's Keras ResNet-8, converted NCHW) takes
    the same normalised input as the ResNet teacher. Exact inside the image; at the
    zero-padded border the raw model saw black where this one sees the mean colour (measured:
    76.2 → 73.1 % on the held-out half before any training, which distillation then recovers)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    scale = 255 * torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    shift = 255 * torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        conv.bias += (conv.weight * shift).sum((1, 2, 3))
        conv.weight *= scale
    return model


def cifar_bundle(data: str | Path, batch_size: int = 64, calib_size: int = 512, seed: int = 0,
                 limit: int | None = None, val_fraction: float = 0.5):
    """The CIFAR-10 JPEG test set split in two (halves by default): train/calib on one part,
    val on the other."""
    import edgecompress as ec

    return ec.data.image_folder(data, batch_size=batch_size, seed=seed, val_fraction=val_fraction,
                                mean=CIFAR_MEAN, std=CIFAR_STD, calib_size=calib_size,
                                limit=limit)
