"""mAP of a detector artifact and of its reference on the user's labelled images.

The evaluation batches are ``(inputs, targets)`` with ``targets`` one dict per image,
``{"boxes": (M, 4) xyxy, "labels": (M,)}`` (numpy or torch) in the pixels of the **model
input** (after letterboxing: what the bundle's inputs are). Both models' raw outputs are decoded
by the artifact's detection spec (the runtime's decode + NMS) and scored by
:func:`edgecompress.detection_map`; the record holds both mAPs and their difference.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..data.bundle import DataBundle, iter_batches
from ..detection import DetectionHead
from ..mean_ap import detection_map
from ..runtime.detect import decode

Outputs = Callable[[Any], Mapping[str, np.ndarray]]  # a batch of inputs -> named raw outputs

log = logging.getLogger("edgecompress")


def _targets(y: Any) -> list[dict[str, np.ndarray]] | None:
    """``y`` as per-image numpy targets, or None when it is not a list of box dicts."""
    if not isinstance(y, (list, tuple)) or not all(isinstance(t, Mapping) and "boxes" in t
                                                   and "labels" in t for t in y):
        return None
    return [{"boxes": _np(t["boxes"]).reshape(-1, 4).astype(np.float32),
             "labels": _np(t["labels"]).reshape(-1).astype(np.int64)} for t in y]


def _np(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _size(x: Any, layout: str | None) -> tuple[int, int]:
    shape = tuple(x.shape)
    return (int(shape[1]), int(shape[2])) if layout == "NHWC" else (int(shape[-2]), int(shape[-1]))


def detection_maps(artifact: Outputs, reference: Outputs,
                   data: DataBundle | Iterable[Any] | None, detection: Mapping[str, Any],
                   layout: str | None = "NCHW", limit: int | None = None
                   ) -> dict[str, Any] | None:
    """mAP@0.5 / @0.5:0.95 of the artifact and of the reference (each given as a function of
    a batch of inputs to their raw outputs) and the deltas (artifact − reference), or None when
    the data has no box targets."""
    loader = data.val if isinstance(data, DataBundle) else data
    if loader is None:
        return None
    head = DetectionHead.from_dict(detection)
    art, ref, targets = [], [], []
    for x, y in iter_batches(loader, limit):
        found = _targets(y)
        if found is None:
            return None
        size = _size(x, layout)
        art += decode(artifact(x), head, size)
        ref += decode(reference(x), head, size)
        targets += found
    if not any(len(t["boxes"]) for t in targets):
        return None
    a = detection_map(art, targets, head.class_names)
    r = detection_map(ref, targets, head.class_names)
    return {"map50": a.map50, "map50_95": a.map50_95, "reference_map50": r.map50,
            "reference_map50_95": r.map50_95, "map50_delta": a.map50 - r.map50,
            "map50_95_delta": a.map50_95 - r.map50_95, "images": a.n_images,
            "backend": a.backend, "per_class": a.per_class}


__all__ = ["detection_maps"]
