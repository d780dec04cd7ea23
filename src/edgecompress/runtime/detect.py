"""Detections from a detector artifact, in numpy (the device needs no torch).

``runner.detect(image)``: the image (a path, a Pillow image, or an HWC uint8 array) is resized
as the artifact's ``preprocess`` metadata says (stretched, or letterboxed keeping its aspect),
normalised and run; the raw outputs are decoded as its ``detection`` spec says
(:class:`edgecompress.detection.DetectionHead`), filtered by score, reduced by per-class NMS
and mapped back to the image's own pixels. Detections follow torchvision's convention:
``{"boxes": (N, 4) float32 xyxy, "scores": (N,) float32, "labels": (N,) int64}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from ..detection import DetectionHead, head_of
from ..errors import ArtifactError, InputError
from .preprocess import image_geometry
from .tensor_spec import TensorSpec


class Runner(Protocol):
    """What detection needs of a runner (:class:`edgecompress.runtime.base.Runner` has it)."""

    path: Path
    metadata: dict[str, Any]
    inputs: list[TensorSpec]

    def run_named(self, x: Any) -> dict[str, np.ndarray]: ...

Detection = dict[str, np.ndarray]


@dataclass(frozen=True)
class Geometry:
    """How an image was placed in the model input: input = image * scale + pad (per axis)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # the image's own size
    height: int


def read_image(image: Any) -> np.ndarray:
    """``image`` (a path, a Pillow image, an HWC or HW uint8 array) as an HWC uint8 array."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        try:
            with Image.open(image) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the image {image}: {exc}") from None
    if hasattr(image, "convert") and hasattr(image, "size"):  # a Pillow image
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if not is_image(arr):
        raise InputError(f"detect() takes an image: a path, a Pillow image or an (H, W, 3) "
                         f"uint8 array; got {arr.dtype} of shape {list(arr.shape)}")
    return arr[:, :, None] if arr.ndim == 2 else arr


def place(image: np.ndarray, size: tuple[int, int], preprocess: Mapping[str, Any]
          ) -> tuple[np.ndarray, Geometry]:
    """``image`` resized into ``size`` (height, width): stretched, or letterboxed (aspect kept,
    centred, padded with ``pad_value``) when ``preprocess["resize"] == "letterbox"``."""
    from PIL import Image

    h, w = image.shape[:2]
    out_h, out_w = size
    mode = "L" if image.shape[2] == 1 else "RGB"
    pil = Image.fromarray(image[:, :, 0] if mode == "L" else image, mode)
    if preprocess.get("resize", "stretch") != "letterbox":
        resized = np.asarray(pil.resize((out_w, out_h), Image.BILINEAR))
        return resized.reshape(out_h, out_w, -1), Geometry(out_w / w, out_h / h, 0.0, 0.0, w, h)
    r = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas = np.full((out_h, out_w, image.shape[2]), preprocess.get("pad_value", 114.0), np.uint8)
    resized = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR)).reshape(new_h, new_w, -1)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return canvas, Geometry(new_w / w, new_h / h, float(pad_x), float(pad_y), w, h)


def image_input(image: Any, runner: Runner) -> tuple[np.ndarray, Geometry]:
    """The model input (a batch of one) for ``image`` and where the image lies in it."""
    meta = runner.metadata.get("preprocess") or {}
    layout = meta.get("layout", "NCHW")
    c, h, w = image_geometry(runner.inputs[0], layout)
    arr = read_image(image)
    arr = arr.mean(2, keepdims=True).astype(np.uint8) if c == 1 and arr.shape[2] == 3 else arr
    arr = np.repeat(arr, 3, 2) if c == 3 and arr.shape[2] == 1 else arr
    placed, geometry = place(arr, (h, w), meta)
    if c == 3 and meta.get("channel_order", "RGB") == "BGR":
        placed = placed[:, :, ::-1]
    x = placed.astype(np.float32) * float(meta.get("scale", 1 / 255))
    x = (x - np.asarray(meta.get("mean") or [0.0] * c, np.float32)) / np.asarray(
        meta.get("std") or [1.0] * c, np.float32)
    x = x.transpose(2, 0, 1) if layout == "NCHW" else x
    return np.ascontiguousarray(x[None].astype(runner.inputs[0].dtype)), geometry


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first (torchvision's ``nms`` rule:
    a box overlapping a kept one by IoU > ``iou_threshold`` is dropped)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        inter = (np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
                 * np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None))
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                iou_threshold: float) -> np.ndarray:
    """NMS within each label: boxes of different labels never suppress each other."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    offsets = labels.astype(boxes.dtype) * (float(boxes.max()) + 1.0)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _arrays(outputs: Mapping[str, np.ndarray], head: DetectionHead) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, A, 4), scores (N, A, C)) of the raw outputs, in the head's box form."""
    names = list(head.outputs) or list(outputs)
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ArtifactError(f"the detection spec reads outputs {missing}; the artifact gives "
                            f"{list(outputs)}")
    first = np.asarray(outputs[names[0]], dtype=np.float32)
    two = len(names) > 1 and (head.outputs or (head.kind == "yolo" and first.shape[1] == 4)
                              or (head.kind == "boxes_scores" and first.shape[-1] == 4))
    if head.kind == "yolo":  # channel-first
        raw = np.concatenate([first, np.asarray(outputs[names[1]], np.float32)], 1) if two else first
        raw = raw.transpose(0, 2, 1)
    else:
        raw = (np.concatenate([first, np.asarray(outputs[names[1]], np.float32)], 2) if two
               else first)
    if raw.ndim != 3 or raw.shape[2] < 5:
        raise ArtifactError(f"detection outputs {names} give shape {list(raw.shape)}; the "
                            f"{head.kind} head needs 4 box values and at least one class score")
    return raw[..., :4], raw[..., 4:]


def _corners(boxes: np.ndarray, head: DetectionHead, size: tuple[int, int]) -> np.ndarray:
    if head.kind == "yolo":
        cx, cy, w, h = boxes.T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    if head.normalized:
        boxes = boxes * np.asarray([size[1], size[0], size[1], size[0]], np.float32)
    return boxes


def candidates(boxes: np.ndarray, scores: np.ndarray, head: DetectionHead,
               size: tuple[int, int]) -> Detection:
    """One image's candidates before NMS: above the score threshold, best ``max_candidates``,
    boxes as corners in input pixels (``size`` = (height, width)), best score first."""
    if head.multi_label:
        anchor, label = np.nonzero(scores > head.score_threshold)
        score = scores[anchor, label]
    else:
        label = scores.argmax(1)
        score = scores[np.arange(len(scores)), label]
        anchor = np.nonzero(score > head.score_threshold)[0]
        label, score = label[anchor], score[anchor]
    top = np.argsort(-score, kind="stable")[:head.max_candidates]
    return {"boxes": _corners(boxes[anchor[top]], head, size).astype(np.float32),
            "scores": score[top].astype(np.float32), "labels": label[top].astype(np.int64)}


def suppress(cands: Detection, head: DetectionHead) -> Detection:
    """The candidates per-class NMS keeps, at most ``max_detections``, best first."""
    keep = batched_nms(cands["boxes"], cands["scores"], cands["labels"],
                       head.iou_threshold)[:head.max_detections]
    return {k: v[keep] for k, v in cands.items()}


def raw_arrays(outputs: Mapping[str, np.ndarray], head: DetectionHead
               ) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, A, 4), scores (N, A, C)) of a detector's raw outputs."""
    return _arrays(outputs, head)


def decode(outputs: Mapping[str, np.ndarray], head: DetectionHead,
           input_size: tuple[int, int]) -> list[Detection]:
    """Per image of the batch, the detections of the raw ``outputs`` in input pixels
    (``input_size`` = (height, width): what normalised boxes are scaled by)."""
    boxes, scores = _arrays(outputs, head)
    return [suppress(candidates(b, s, head, input_size), head) for b, s in zip(boxes, scores)]


def to_image(det: Detection, geometry: Geometry) -> Detection:
    """Detections in input pixels → in the image's own pixels (clipped to the image; boxes
    left with no area are dropped)."""
    g = geometry
    boxes = det["boxes"].astype(np.float64).copy()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - g.pad_x) / g.scale_x).clip(0, g.width)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - g.pad_y) / g.scale_y).clip(0, g.height)
    # a box wholly in the letterbox padding is clipped to nothing: not a detection in the image
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {**{k: v[inside] for k, v in det.items()}, "boxes": boxes[inside].astype(np.float32)}


def detector_head(runner: Runner) -> DetectionHead:
    """The detection spec of ``runner``'s artifact, or InputError saying it has none."""
    head = head_of(runner.metadata)
    if head is None:
        raise InputError(f"{runner.path.name} is not a detector artifact (its metadata holds no "
                         f"'detection' spec); export a detector with Pipeline.run(..., "
                         f"task='detect') or a recognised head, or call the runner on tensors")
    return head


def detect(runner: Runner, image: Any) -> Detection:
    """Detections of ``runner``'s artifact on one image, in the image's own pixels."""
    head = detector_head(runner)
    x, geometry = image_input(image, runner)
    layout = (runner.metadata.get("preprocess") or {}).get("layout", "NCHW")
    _, h, w = image_geometry(runner.inputs[0], layout)
    return to_image(decode(runner.run_named(x), head, (h, w))[0], geometry)


def is_image(x: Any) -> bool:
    """True for what :func:`detect` takes and no tensor input is: a path, a Pillow image, or
    an (H, W[, 1|3]) uint8 array."""
    if isinstance(x, (str, Path)) or (hasattr(x, "convert") and hasattr(x, "size")):
        return True
    return (isinstance(x, np.ndarray) and x.dtype == np.uint8
            and (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3))))


__all__ = ["Geometry", "batched_nms", "candidates", "decode", "detect", "image_input", "is_image",
           "nms", "place", "raw_arrays", "read_image", "suppress", "to_image"]
