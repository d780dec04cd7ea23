"""A generated object-detection data set: shapes pasted on textured backgrounds, exact boxes.

Nothing is downloaded: every image is drawn from a seed, so a detector can be trained and its
mAP measured on any machine. Each object is a filled shape (circle, square, triangle, cross or
a scikit-learn bundled digit) in a colour that contrasts with the background under it, at a
random scale and position; objects do not overlap, so every box is the exact pixel extent of
its object.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .detection import DetectionSet

SHAPES = ("circle", "square", "triangle", "cross")


def synthetic_detection(n: int, size: int = 320, seed: int = 0,
                        classes: Sequence[str] = SHAPES, max_objects: int = 4,
                        scale: tuple[float, float] = (0.08, 0.35)) -> DetectionSet:
    """``n`` generated ``size``×``size`` RGB images with exact boxes (one DetectionSet).

    Args:
        n: number of images.
        size: image side in pixels.
        seed: the same seed gives the same images and boxes.
        classes: class names, drawn from ``"circle"``, ``"square"``, ``"triangle"``,
            ``"cross"`` and ``"digit0"``…``"digit9"`` (scikit-learn's bundled 8×8 digits).
        max_objects: each image holds 1…``max_objects`` objects.
        scale: object side as a fraction of ``size`` (smallest, largest).
    """
    _check(n, size, classes, max_objects, scale)
    drawers = [_drawer(name) for name in classes]
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image, boxes, labels = _one_image(rng, size, drawers, max_objects, scale)
        images.append(image)
        targets.append({"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, np.int64)})
    return DetectionSet(images, targets, list(classes), name=f"synthetic_detection(seed={seed})")


def _check(n: int, size: int, classes: Sequence[str], max_objects: int,
           scale: tuple[float, float]) -> None:
    if n < 1 or size < 32:
        raise ConfigError(f"synthetic_detection: need n >= 1 and size >= 32, got n={n}, "
                          f"size={size}")
    if not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"synthetic_detection: classes must be distinct names, got "
                          f"{list(classes)}")
    if max_objects < 1:
        raise ConfigError(f"synthetic_detection: max_objects must be >= 1, got {max_objects}")
    lo, hi = scale
    if not 0 < lo <= hi <= 0.9:
        raise ConfigError(f"synthetic_detection: scale must satisfy 0 < low <= high <= 0.9, "
                          f"got {scale}")


def _one_image(rng: np.random.Generator, size: int, drawers: list[Callable], max_objects: int,
               scale: tuple[float, float]) -> tuple[np.ndarray, list, list]:
    image = _background(rng, size)
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # rejection sampling keeps objects apart
            side = max(8, int(rng.uniform(*scale) * size))
            w = max(8, int(side * rng.uniform(0.7, 1.3)))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - side + 1))
            if not any(_overlaps((x0, y0, x0 + w, y0 + side), b) for b in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(drawers)))
        mask = drawers[label](rng, side, w)
        box = _paste(image, mask, x0, y0, rng)
        if box is not None:
            boxes.append(box)
            labels.append(label)
    return image, boxes, labels


def _overlaps(a: tuple[int, ...], b: Sequence[float], margin: int = 2) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0]
                or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _paste(image: np.ndarray, mask: np.ndarray, x0: int, y0: int,
           rng: np.random.Generator) -> list[float] | None:
    """Fill ``mask`` at (x0, y0) in a contrasting colour; the box of the pixels drawn."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    region = image[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    under = region[mask].astype(np.float32).mean(axis=0)
    colour = _contrasting(rng, under)
    shade = rng.uniform(0.85, 1.0, size=(int(mask.sum()), 1))  # a little texture on the object
    region[mask] = np.clip(colour * shade, 0, 255).astype(np.uint8)
    # a box in pixel-edge coordinates: pixel (x, y) covers [x, x + 1)
    return [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1),
            float(y0 + ys.max() + 1)]


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - under).sum() > 180:
            return colour
    return 255.0 - under


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise + stripes + pixel noise: texture a detector must ignore."""
    cells = int(rng.integers(3, 9))
    coarse = rng.uniform(40, 215, size=(cells, cells, 3))
    idx = np.linspace(0, cells - 1, size)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    f = (idx - lo)[:, None]
    rows = coarse[lo] * (1 - f[..., None]) + coarse[hi] * f[..., None]  # (size, cells, 3)
    image = rows[:, lo] * (1 - f[None, :, :]) + rows[:, hi] * f[None, :, :]
    yy, xx = np.mgrid[0:size, 0:size]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += stripes[..., None] * rng.uniform(0, 30)
    image += rng.normal(0, rng.uniform(2, 12), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _drawer(name: str) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    if name in _SHAPE_DRAWERS:
        return _SHAPE_DRAWERS[name]
    if name.startswith("digit") and name[5:].isdigit() and 0 <= int(name[5:]) <= 9:
        return lambda rng, h, w, d=int(name[5:]): _digit(rng, h, w, d)
    raise ConfigError(f"synthetic_detection: unknown class {name!r}; use "
                      f"{', '.join(SHAPES)} or digit0..digit9")


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1


def _circle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    return x ** 2 + y ** 2 <= 1.0


def _square(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.ones((h, w), bool)


def _triangle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    apex = rng.uniform(-0.5, 0.5)  # apex anywhere along the top edge's middle
    t = (y + 1) / 2  # 0 at the top, 1 at the bottom
    return (x >= apex + (-1 - apex) * t) & (x <= apex + (1 - apex) * t)


def _cross(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = _grid(h, w)
    bar = rng.uniform(0.25, 0.45)
    return (np.abs(x) <= bar) | (np.abs(y) <= bar)


_SHAPE_DRAWERS = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross}
_DIGITS: dict[int, list[np.ndarray]] = {}


def _digit(rng: np.random.Generator, h: int, w: int, digit: int) -> np.ndarray:
    """One of scikit-learn's bundled 8×8 images of ``digit``, upscaled and thresholded."""
    if not _DIGITS:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        for d in range(10):
            _DIGITS[d] = list(bunch.images[bunch.target == d])
    img = _DIGITS[digit][int(rng.integers(len(_DIGITS[digit])))]
    rows = np.minimum((np.arange(h) * 8) // h, 7)
    cols = np.minimum((np.arange(w) * 8) // w, 7)
    return img[rows][:, cols] >= 6
