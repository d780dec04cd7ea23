"""CIFAR-10 ResNet-20/56 (He et al. 2016, CIFAR variant) matching the pretrained state dicts in
``../shared/data/resnet-cifar10-pretrained`` (akamaster/pytorch_resnet_cifar10), and the MLPerf
Tiny ResNet-8 read from its Keras file (``../shared/data/mlperf-tiny-resnet8``).

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


class KerasBlock(nn.Module):
    """One MLPerf Tiny ResNet-8 stack. Keras "same" padding of a stride-2 3×3 convolution pads
    only the bottom and right (PyTorch's padding=1 pads all sides and shifts the sampling grid
    by one pixel), hence the explicit pad; the downsampling shortcut is a 1×1 convolution."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pad: nn.Module = nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if stride == 2 else 1)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)  # Keras' default epsilon
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.shortcut: nn.Module = nn.Conv2d(cin, cout, 1, stride) if stride != 1 else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(self.pad(x))))
        return self.relu2(self.shortcut(x) + self.bn2(self.conv2(out)))


class ResNet8(ThreeStageNet):
    """MLPerf Tiny's image-classification model ("resnet_v1_eembc", ~78k parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(16, eps=1e-3)
        self.relu = nn.ReLU()
        self.layer1 = KerasBlock(16, 16, 1)
        self.layer2 = KerasBlock(16, 32, 2)
        self.layer3 = KerasBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)


# our module name -> the Keras layer holding its weights (the order of the Keras functional graph)
_KERAS_RESNET8 = {
    "conv1": "conv2d", "bn1": "batch_normalization",
    "layer1.conv1": "conv2d_1", "layer1.bn1": "batch_normalization_1",
    "layer1.conv2": "conv2d_2", "layer1.bn2": "batch_normalization_2",
    "layer2.conv1": "conv2d_3", "layer2.bn1": "batch_normalization_3",
    "layer2.conv2": "conv2d_4", "layer2.bn2": "batch_normalization_4", "layer2.shortcut": "conv2d_5",
    "layer3.conv1": "conv2d_6", "layer3.bn1": "batch_normalization_5",
    "layer3.conv2": "conv2d_7", "layer3.bn2": "batch_normalization_6", "layer3.shortcut": "conv2d_8",
    "linear": "dense"}


def load_keras_resnet8(path: str | Path) -> ResNet8:
    """ResNet-8 with the weights of MLPerf Tiny's ``pretrainedResnet.h5`` (read with h5py: no
    TensorFlow needed, no code in the file is run). It takes raw 0..255 RGB pixels, like the
    Keras model; :func:`take_normalized_input` makes it take this module's normalised input."""
    try:
        import h5py
    except ImportError as exc:
        raise SystemExit("reading a Keras .h5 student needs h5py: pip install h5py") from exc
    import numpy as np

    model = ResNet8()
    modules = dict(model.named_modules())
    with h5py.File(path, "r") as f, torch.no_grad():
        weights = f["model_weights"]
        for ours, keras in _KERAS_RESNET8.items():
            mod = modules[ours]
            w = {name.removesuffix(":0"): torch.from_numpy(np.asarray(array))
                 for name, array in weights[keras][keras].items()}
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(w["kernel"].permute(3, 2, 0, 1))  # HWIO -> OIHW
                mod.bias.copy_(w["bias"])
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(w["kernel"].T)
                mod.bias.copy_(w["bias"])
            else:
                mod.weight.copy_(w["gamma"])
                mod.bias.copy_(w["beta"])
                mod.running_mean.copy_(w["moving_mean"])
                mod.running_var.copy_(w["moving_variance"])
    return model.eval()


def take_normalized_input(model: ResNet8) -> ResNet8:
    """Fold ``raw = 255 · (x · std + mean)`` into the first convolution (in place), so the model
    takes the same normalised input as the ResNet teacher. Exact inside the image; at the
    zero-padded border the raw model saw black where this one sees the mean colour (measured:
    76.2 → 73.1 % on the held-out half before any training, which distillation then recovers)."""
    scale, shift = _to_raw()
    with torch.no_grad():
        model.conv1.bias += (model.conv1.weight * shift).sum((1, 2, 3))
        model.conv1.weight *= scale
    return model


def _to_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with ``raw = x · scale + shift``."""
    return (255 * torch.tensor(CIFAR_STD).view(1, 3, 1, 1),
            255 * torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))


def raw_pixels(x: torch.Tensor) -> torch.Tensor:
    """This module's normalised input back to 0..255 pixels (what the Keras model takes)."""
    scale, shift = _to_raw()
    return x * scale + shift


def cifar_bundle(data: str | Path, batch_size: int = 64, calib_size: int = 512, seed: int = 0,
                 limit: int | None = None, val_fraction: float = 0.5):
    """The CIFAR-10 JPEG test set split in two (halves by default): train/calib on one part,
    val on the other."""
    import edgecompress as ec

    return ec.data.image_folder(data, batch_size=batch_size, seed=seed, val_fraction=val_fraction,
                                mean=CIFAR_MEAN, std=CIFAR_STD, calib_size=calib_size,
                                limit=limit)
