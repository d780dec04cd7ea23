"""Turn an image into a model input the way the artifact's metadata says (no torch needed).

Every artifact records its preprocessing (``scale``, per-channel ``mean``/``std``, ``layout``)
and its input shape; the server and the camera examples rebuild the model's input from those,
so the device needs only Pillow and numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from .tensor_spec import TensorSpec


def image_geometry(spec: TensorSpec, layout: str) -> tuple[int, int, int]:
    """(channels, height, width) of an image input, or an InputError when it is not an image."""
    shape = spec.shape
    if len(shape) != 4:
        raise InputError(f"input '{spec.name}' has shape {list(shape)}: not an image input "
                         f"(expected 4 dimensions); send a tensor instead of an image")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise InputError(f"input '{spec.name}' has dynamic image dimensions {list(shape)}; "
                         f"send a tensor of the size you want instead of an image")
    if c not in (1, 3):
        raise InputError(f"input '{spec.name}' has {c} channels; images have 1 or 3")
    return int(c), int(h), int(w)


def image_to_input(image: Any, spec: TensorSpec, preprocess: dict[str, Any] | None) -> np.ndarray:
    """A Pillow image → a batch of one, resized, scaled and normalised for ``spec``.

    ``preprocess`` is the artifact's ``preprocess`` metadata (``scale``, ``mean``, ``std``,
    ``layout``); without it pixels are scaled to [0, 1] and the layout is NCHW.
    """
    meta = preprocess or {}
    layout = meta.get("layout", "NCHW")
    c, h, w = image_geometry(spec, layout)
    img = image.convert("L" if c == 1 else "RGB").resize((w, h))
    x = np.asarray(img, dtype=np.float32).reshape(h, w, c) * float(meta.get("scale", 1 / 255))
    mean = np.asarray(meta.get("mean") or [0.0] * c, np.float32)
    std = np.asarray(meta.get("std") or [1.0] * c, np.float32)
    x = (x - mean) / std
    x = x.transpose(2, 0, 1) if layout == "NCHW" else x
    return np.ascontiguousarray(x[None].astype(spec.dtype))


# below this many scores, plain Python beats numpy's per-call overhead (a server answers this per
# request: 10 classes took ~40 µs through numpy, ~8 µs as lists)
_SMALL = 256


def _top_k_lists(scores: np.ndarray, k: int, names: list[str]) -> list[list[dict[str, Any]]]:
    rows = scores.reshape(scores.shape[0], -1).tolist()
    out = []
    for row in rows:
        top = max(row) if row else 0.0
        e = [math.exp(v - top) for v in row]
        total = sum(e)
        # sorted() keeps equal scores in index order, as the stable argsort below does
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:max(1, int(k))]
        out.append([{"index": i, "label": names[i] if i < len(names) else str(i),
                     "score": float(row[i]), "probability": e[i] / total} for i in order])
    return out


def top_k(scores: np.ndarray, k: int, class_names: list[str] | None) -> list[list[dict[str, Any]]]:
    """Per sample, the ``k`` highest scores with their class index, name and softmax probability."""
    if scores.size <= _SMALL:
        return _top_k_lists(scores, k, class_names or [])
    flat = np.asarray(scores, dtype=np.float64).reshape(scores.shape[0], -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    k = max(1, min(int(k), flat.shape[1]))
    names = class_names or []
    # plain lists: indexing numpy scalars one by one cost more than the whole softmax (a server
    # answers this per request)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k].tolist()
    return [[{"index": i, "label": names[i] if i < len(names) else str(i), "score": s[i],
              "probability": p[i]} for i in idx]
            for idx, s, p in zip(order, flat.tolist(), probs.tolist())]
