"""Image classification data laid out as ``class/xxx.jpg``, in a folder or a tar file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from ..errors import DataError
from .bundle import DataBundle
from .tensors import bundle_from_arrays

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _decode(data: bytes, name: str, size: int | None, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from exc
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _walk_folder(root: Path) -> Iterator[tuple[str, str, bytes]]:
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            yield f.parent.name, str(f), f.read_bytes()


def _walk_tar(path: Path) -> Iterator[tuple[str, str, bytes]]:
    try:
        with tarfile.open(path) as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                p = PurePosixPath(m.name)
                if m.isfile() and p.suffix.lower() in IMAGE_SUFFIXES and len(p.parts) >= 2:
                    fh = tar.extractfile(m)
                    if fh is not None:  # read bytes only: nothing is extracted to disk
                        yield p.parent.name, m.name, fh.read()
    except tarfile.TarError as exc:
        raise DataError(f"cannot read tar file {path}: {exc}") from exc


def image_folder(path: str | Path, image_size: int | None = None, batch_size: int = 64,
                 seed: int = 0, val_fraction: float = 0.5, mode: str = "RGB",
                 mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD, limit: int | None = None,
                 calib_size: int = 256, layout: str = "NCHW") -> DataBundle:
    """Images under ``class_name/`` folders (a directory or a ``.tar``) split into train and val.

    Class indices follow the sorted class-folder names. The split is stratified-free but seeded;
    ``limit`` keeps a seeded random subset (handy for quick runs). Pass ``mean=None`` to
    normalise with the data's own statistics; ``layout="NHWC"`` for channels-last models (Keras).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"image data {p} does not exist")
    walker = _walk_tar(p) if p.is_file() else _walk_folder(p)
    records = list(walker)
    if not records:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under "
                        f"class folders in {p}")
    classes = sorted({c for c, _, _ in records})
    order = np.random.default_rng(seed).permutation(len(records))
    if limit is not None:
        order = order[:limit]
    images = np.stack([_decode(records[i][2], records[i][1], image_size, mode) for i in order])
    labels = np.array([classes.index(records[i][0]) for i in order], dtype=np.int64)
    n_val = max(1, int(round(len(images) * val_fraction)))
    if n_val >= len(images):
        raise DataError(f"{p}: {len(images)} images are too few to split into train and val")
    return bundle_from_arrays(images[n_val:], labels[n_val:], images[:n_val], labels[:n_val],
                              name=p.stem, batch_size=batch_size, seed=seed,
                              calib_size=calib_size, mean=mean, std=std, class_names=classes,
                              layout=layout)
