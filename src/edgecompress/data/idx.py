"""IDX files (MNIST, Fashion-MNIST), plain or compressed with gzip or xz."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .bundle import DataBundle
from .tensors import bundle_from_arrays

_OPENERS = {".gz": gzip.open, ".xz": lzma.open}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (uint8 payload) into an array; the header gives its shape."""
    p = Path(path)
    opener = _OPENERS.get(p.suffix, open)
    try:
        with opener(p, "rb") as fh:  # type: ignore[operator]
            raw = fh.read()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read IDX file {p}: {exc}") from exc
    if len(raw) < 8:
        raise DataError(f"{p} is too short to be an IDX file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in (_IMAGE_MAGIC, _LABEL_MAGIC):
        raise DataError(f"{p} is not an IDX file of uint8 images or labels (magic {magic}; "
                        f"expected {_IMAGE_MAGIC} or {_LABEL_MAGIC})")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{p} is truncated or padded: header says {expected} values, the file "
                        f"holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, split: str, kind: str) -> Path:
    stems = [f"{split}-{kind}", f"{split}-{kind.replace('-idx', '.idx')}"]
    for stem in stems:
        for suffix in ("", ".gz", ".xz"):
            cand = root / f"{stem}{suffix}"
            if cand.exists():
                return cand
    raise DataError(f"no '{split}-{kind}' file (plain, .gz or .xz) in {root}; expected the "
                    f"MNIST file names, e.g. {split}-{kind}.gz")


def idx(root: str | Path, image_size: int | None = None, batch_size: int = 64, seed: int = 0,
        channels: int | None = None, limit_train: int | None = None,
        limit_val: int | None = None, calib_size: int = 256,
        class_names: Sequence[str] | None = None, layout: str = "NCHW") -> DataBundle:
    """MNIST-style IDX data in ``root`` (``train-*`` for training, ``t10k-*`` for validation);
    ``layout="NHWC"`` for channels-last models (Keras)."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"IDX data folder {r} does not exist")
    arrays = {}
    for split in ("train", "t10k"):
        images = read_idx(_find(r, split, "images-idx3-ubyte"))
        labels = read_idx(_find(r, split, "labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{r}: {split} has {len(images)} images but {len(labels)} labels")
        limit = limit_train if split == "train" else limit_val
        if limit is not None:
            idx_ = np.random.default_rng(seed).permutation(len(images))[:limit]
            images, labels = images[np.sort(idx_)], labels[np.sort(idx_)]
        arrays[split] = (images, labels)
    return bundle_from_arrays(*arrays["train"], *arrays["t10k"], name=r.name,
                              image_size=image_size, channels=channels, batch_size=batch_size,
                              calib_size=calib_size, seed=seed, class_names=class_names,
                              layout=layout)
