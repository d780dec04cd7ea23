"""Build a DataBundle from in-memory arrays (shared by every bundled loader)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..errors import DataError
from .bundle import DataBundle, Preprocess


def _as_float_images(x: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    t = torch.as_tensor(np.array(x))  # a copy: IDX buffers are read-only
    if t.dim() == 3:  # N, H, W → N, 1, H, W
        t = t.unsqueeze(1)
    if t.dim() != 4:
        raise DataError(f"images must have shape (N, H, W) or (N, C, H, W); got {tuple(t.shape)}")
    return t.float() * scale


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    raise DataError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


def bundle_from_arrays(x_train: np.ndarray | torch.Tensor, y_train: np.ndarray | torch.Tensor,
                       x_val: np.ndarray | torch.Tensor, y_val: np.ndarray | torch.Tensor, *,
                       name: str, image_size: int | None = None, channels: int | None = None,
                       batch_size: int = 64, calib_size: int = 256, seed: int = 0,
                       scale: float = 1 / 255, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None,
                       class_names: Sequence[str] | None = None,
                       layout: str = "NCHW") -> DataBundle:
    """Images (uint8 or float) and integer labels → normalised, resized loaders in a bundle.

    ``mean``/``std`` default to the per-channel statistics of the training images (after
    scaling), so the model sees roughly zero-mean, unit-variance inputs. ``layout="NHWC"``
    gives channels-last batches (what a model converted from Keras takes).
    """
    if layout not in ("NCHW", "NHWC"):
        raise DataError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if len(x_train) == 0 or len(x_val) == 0:
        raise DataError(f"{name}: the train and val splits must both hold samples "
                        f"(got {len(x_train)} and {len(x_val)})")
    xt = _channels(_resize(_as_float_images(x_train, scale), image_size), channels)
    xv = _channels(_resize(_as_float_images(x_val, scale), image_size), channels)
    if mean is None or std is None:
        mean = tuple(float(m) for m in xt.mean(dim=(0, 2, 3)))
        std = tuple(max(float(s), 1e-6) for s in xt.std(dim=(0, 2, 3)))
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    xt, xv = (xt - m) / s, (xv - m) / s
    if layout == "NHWC":
        xt, xv = xt.permute(0, 2, 3, 1).contiguous(), xv.permute(0, 2, 3, 1).contiguous()
    yt = torch.as_tensor(np.array(y_train)).long()
    yv = torch.as_tensor(np.array(y_val)).long()
    num_classes = int(max(int(yt.max()), int(yv.max())) + 1)
    calib_n = min(calib_size, len(xt))
    return DataBundle(
        train=_loader(xt, yt, batch_size, True, seed),
        val=_loader(xv, yv, batch_size, False, seed),
        calib=_loader(xt[:calib_n], yt[:calib_n], batch_size, False, seed),
        example_input=xv[:1].clone(),
        num_classes=num_classes if class_names is None else len(class_names),
        class_names=list(class_names) if class_names is not None else None,
        preprocess=Preprocess(mean=tuple(mean), std=tuple(std), layout=layout, scale=scale),
        name=name,
    )
