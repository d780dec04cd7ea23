"""DetectionSet: labelled images for object detection, and the DataBundle a pipeline trains on.

A target is ``{"boxes": float32 (N, 4) xyxy in the image's own pixels, "labels": int64 (N,)}``
(torchvision's convention, in numpy); class ids start at 0 and name ``class_names``. The
generated set (:func:`edgecompress.data.synthetic_detection`) and the COCO / YOLO folder
loaders all return this one type; :meth:`DetectionSet.bundle` letterboxes the images into the
square float inputs a detector takes, with the targets mapped into the same input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from .bundle import DataBundle, Preprocess

Target = dict[str, np.ndarray]
PAD_VALUE = 114  # the grey YOLO-family letterboxes pad with


@dataclass
class DetectionSet:
    """Images (uint8 HWC RGB arrays, or paths read when needed) with one target per image."""

    images: list[Any]
    targets: list[Target]
    class_names: list[str]
    name: str = "detection"
    ids: list[Any] = field(default_factory=list)  # the source's image ids / file stems

    def __post_init__(self) -> None:
        if len(self.images) != len(self.targets):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.targets)} "
                            f"targets; give one target dict per image")
        for i, t in enumerate(self.targets):
            _check_target(t, i, len(self.class_names), self.name)
        if not self.ids:
            self.ids = list(range(len(self.images)))

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a uint8 (H, W, 3) RGB array."""
        return read_image(self.images[i])

    def subset(self, indices: Sequence[int]) -> "DetectionSet":
        """The images at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return DetectionSet([self.images[i] for i in idx], [self.targets[i] for i in idx],
                            list(self.class_names), self.name, [self.ids[i] for i in idx])

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["DetectionSet", "DetectionSet"]:
        """(train, val): a seeded random split; the same seed gives the same split."""
        if not 0 < val_fraction < 1 or len(self) < 2:
            raise DataError(f"{self.name}: cannot split {len(self)} images with val_fraction="
                            f"{val_fraction}; need >= 2 images and 0 < val_fraction < 1")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(len(self) * val_fraction)))
        return self.subset(order[n_val:]), self.subset(order[:n_val])

    def bundle(self, size: int = 320, batch_size: int = 16, val: "DetectionSet | None" = None,
               val_fraction: float = 0.2, seed: int = 0, calib_size: int = 64) -> DataBundle:
        """A DataBundle: inputs are letterboxed ``size``×``size`` float RGB in [0, 1] (NCHW),
        labels the per-image targets in those input pixels (a list of dicts per batch).

        ``val`` is the held-out set; without it ``val_fraction`` of this set is split off."""
        from torch.utils.data import DataLoader

        train, held = (self, val) if val is not None else self.split(val_fraction, seed)
        gen = torch.Generator().manual_seed(seed)
        loaders = [DataLoader(_Letterboxed(s, size), batch_size=batch_size, shuffle=shuffle,
                              collate_fn=collate, generator=gen if shuffle else None)
                   for s, shuffle in ((train, True), (held, False),
                                      (train.subset(range(min(calib_size, len(train)))), False))]
        return DataBundle(train=loaders[0], val=loaders[1], calib=loaders[2],
                          num_classes=len(self.class_names), class_names=list(self.class_names),
                          preprocess=Preprocess(resize="letterbox", pad_value=PAD_VALUE),
                          name=self.name, transform=lambda b: b[0], labels=lambda b: b[1])


def _check_target(t: Any, i: int, n_classes: int, name: str) -> None:
    if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
        raise DataError(f"{name}: target {i} must be a dict with 'boxes' (N, 4) and 'labels' "
                        f"(N,), got {type(t).__name__}")
    boxes, labels = np.asarray(t["boxes"]), np.asarray(t["labels"])
    if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
        raise DataError(f"{name}: target {i} has boxes of shape {boxes.shape} and labels of "
                        f"shape {labels.shape}; expected (N, 4) xyxy and (N,)")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{name}: target {i} has class ids {sorted(set(labels.tolist()))} "
                        f"outside 0..{n_classes - 1} ({n_classes} class names)")
    if len(boxes) and bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise DataError(f"{name}: target {i} has a box with x2 < x1 or y2 < y1; boxes must be "
                        f"xyxy (convert xywh with x2 = x + w, y2 = y + h)")


def read_image(image: Any) -> np.ndarray:
    """A uint8 (H, W, 3) RGB array from an array or an image file path."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"a detection image must be uint8 (H, W, 3) RGB, got "
                            f"{image.dtype} {image.shape}")
        return image
    from PIL import Image

    with Image.open(Path(image)) as im:
        return np.asarray(im.convert("RGB"))


def letterbox(image: np.ndarray, size: int, pad_value: int = PAD_VALUE
              ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size``×``size``, centred.

    Returns the image, the scale and the (left, top) padding: an input pixel is
    ``image pixel * scale + pad``."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), pad_value, np.uint8)
    out[top:top + nh, left:left + nw] = image
    return out, scale, (left, top)


class _Letterboxed(torch.utils.data.Dataset):
    """(float CHW input, target in input pixels) per image of a DetectionSet."""

    def __init__(self, data: DetectionSet, size: int):
        self.data, self.size = data, size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        image, scale, (left, top) = letterbox(self.data.image(i), self.size)
        t = self.data.targets[i]
        boxes = np.asarray(t["boxes"], np.float32) * scale + np.array([left, top, left, top],
                                                                       np.float32)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return x, {"boxes": boxes, "labels": np.asarray(t["labels"], np.int64)}


def collate(items: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack the inputs; keep the targets as a list (images hold different numbers of boxes)."""
    return torch.stack([x for x, _ in items]), [t for _, t in items]
