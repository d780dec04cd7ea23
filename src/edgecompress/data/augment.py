"""Training-time augmentation as a loader wrapper: random shifted crops and horizontal flips.

Small data sets (a few thousand images) are where distillation and recovery fine-tuning are
used most, and where a model over-fits fastest; padded random crops plus flips are the standard
CIFAR recipe. The wrapper works on batches of NCHW tensors, so it composes with any loader of
``(images, labels)`` and keeps the loader's length (progress bars and schedules stay right).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.nn import functional as F

from ..errors import DataError


class RandomShiftFlip:
    """Wrap a loader so each image gets its own random crop of a ``pad``-padded copy and, with
    ``flip=True``, a horizontal flip with probability 0.5. Seeded: the same seed gives the same
    augmentations in the same order.

    >>> data.train = ec.data.RandomShiftFlip(data.train, pad=4, flip=True, seed=0)
    """

    def __init__(self, loader: Iterable[Any], pad: int = 4, flip: bool = True, seed: int = 0):
        if pad < 0:
            raise DataError(f"RandomShiftFlip: pad must be >= 0, got {pad}")
        self.loader, self.pad, self.flip = loader, int(pad), bool(flip)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            x, y = batch[0], batch[1]
            if x.dim() != 4:
                raise DataError(f"RandomShiftFlip needs NCHW image batches, got shape "
                                f"{tuple(x.shape)}")
            yield self.augment(x), y

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.flip:
            flipped = torch.rand(n, generator=self.generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
        if self.pad == 0:
            return x
        padded = F.pad(x, (self.pad,) * 4)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
        batch = torch.arange(n)[:, None, None]
        # advanced indexing on dims 0, 2, 3 puts the channel axis last: (n, h, w, c)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
