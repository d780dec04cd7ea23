"""Student builders: small networks adapted to a data set's channels, image size and classes.

``ec.students.build("mobilenet_v3_small", data)`` gives a randomly initialised student whose
first convolution takes ``data``'s channels and whose classifier has ``data.num_classes``
outputs. Torchvision's ImageNet models shrink their input 32× (stride-2 stem, max-pool, four
stride-2 stages); on 28×28 or 32×32 images that leaves a 1×1 map after the stem stages, so for
small inputs the stem keeps full resolution (stride 1, 3×3 kernel, no max-pool), the usual
CIFAR adaptation. Nothing is downloaded: weights are random.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._extras import require
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .data.bundle import DataBundle

#: Below this input side, the stem keeps full resolution.
SMALL_INPUT = 96

TORCHVISION_STUDENTS = ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2",
                        "resnet18", "resnet34", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
                        "mnasnet0_5", "efficientnet_b0")
#: Names of the reference models of :mod:`edgecompress.models` (width is an option).
LOCAL_STUDENTS = ("small_cnn", "small_resnet")
NAMES = TORCHVISION_STUDENTS + LOCAL_STUDENTS


def check_name(name: str) -> str | None:
    """An error text when ``name`` is not a known student (for option checks), else None."""
    if name in NAMES:
        return None
    return f"unknown student '{name}'. Known students: {', '.join(NAMES)}"


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to the input channels")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _adapt_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """Give the first convolution ``in_channels`` inputs; keep full resolution for small inputs."""
    name, conv = _first_conv(model)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    if small:
        # a 7×7/2 ImageNet stem on a 28×28 image throws away most of the pixels at once
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    _set_module(model, name, nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding,
                                       bias=conv.bias is not None))
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()  # resnet, shufflenet: the stem's second 2× reduction


def torchvision_student(name: str, in_channels: int, num_classes: int, image_size: int,
                        **kwargs: Any) -> nn.Module:
    """A randomly initialised torchvision ``name`` adapted to the input and classes.

    ``kwargs`` go to the torchvision builder (e.g. ``width_mult=0.5`` for MobileNets).
    """
    if name not in TORCHVISION_STUDENTS:
        raise ConfigError(f"torchvision_student: unknown model '{name}'. "
                          f"Known: {', '.join(TORCHVISION_STUDENTS)}")
    models = require("torchvision.models", "vision", f"The torchvision student '{name}'")
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"torchvision_student('{name}'): {exc}") from exc
    _adapt_stem(model, in_channels, image_size < SMALL_INPUT)
    return model


def _local_student(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    from . import models

    builder: Callable[..., nn.Module] = getattr(models, name)
    return builder(in_channels=in_channels, num_classes=num_classes, **kwargs)


def build(name: str, data: DataBundle, **kwargs: Any) -> nn.Module:
    """A student named ``name`` for ``data``'s input channels, image size and classes.

    The student is run once on ``data.example_input`` so a network that cannot take that input
    size fails here with a clear message rather than during training.
    """
    problem = check_name(name)
    if problem:
        raise ConfigError(problem)
    x = data.example_input
    if x is None or x.dim() != 4:
        raise DataError(f"students.build('{name}') needs image data (N, C, H, W); the data's "
                        f"example input has shape {None if x is None else tuple(x.shape)}")
    if data.num_classes is None:
        raise DataError(f"students.build('{name}') needs DataBundle.num_classes")
    in_channels, size = int(x.shape[1]), int(min(x.shape[-2:]))
    if name in LOCAL_STUDENTS:
        model = _local_student(name, in_channels, data.num_classes, **kwargs)
    else:
        model = torchvision_student(name, in_channels, data.num_classes, size, **kwargs)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as exc:
        raise ConfigError(f"student '{name}' cannot run on inputs of shape {tuple(x.shape[1:])}: "
                          f"{str(exc).splitlines()[0]}. Resize the data (image_size=) or pick "
                          f"another student") from exc
    if tuple(out.shape) != (1, data.num_classes):
        raise ConfigError(f"student '{name}' gives outputs of shape {tuple(out.shape)}; "
                          f"expected (1, {data.num_classes})")
    return model
