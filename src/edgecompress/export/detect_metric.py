"""Detection agreement: the artifact's detections matched to the reference's, after NMS.

Detections are read per image from named outputs (``boxes`` / ``scores`` / ``labels``, or
``output_<i>_boxes``... for torchvision's list of dicts: already decoded and NMS'd), or decoded
from one raw YOLO-style head (N, 4 + classes, anchors) or (N, anchors, 4 + classes) with boxes as
centre x, y, width, height: best class per anchor, score threshold, NMS (torchvision's
``batched_nms``). A reference detection is matched by an artifact detection of the same label
with IoU ≥ :data:`MATCH_IOU` and a score within :data:`SCORE_TOLERANCE`; the agreement is
matched / max(reference, artifact) detections over all images (1.0 when both find nothing).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

MATCH_IOU = 0.5
SCORE_TOLERANCE = 0.1
RAW_SCORE_THRESHOLD = 0.25
RAW_NMS_IOU = 0.45
MAX_DETECTIONS = 100

Detections = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per image: boxes, scores, labels


def detections(outputs: Mapping[str, np.ndarray]) -> Detections:
    """Per-image (boxes xyxy, scores, labels) of a detector's named outputs."""
    prefixes = [k[: -len("boxes")] for k in outputs if k == "boxes" or k.endswith("_boxes")]
    if prefixes:
        return [_named(outputs, p) for p in prefixes]
    raw = next(iter(outputs.values()))
    if raw.ndim != 3:
        raise ValueError(f"detection outputs need 'boxes'/'scores'/'labels' or one raw head of "
                         f"shape (N, 4 + classes, anchors); got {list(raw.shape)}")
    return [_decode_raw(r) for r in raw]


def _named(outputs: Mapping[str, np.ndarray], prefix: str) -> tuple[np.ndarray, ...]:
    boxes = np.asarray(outputs[f"{prefix}boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(outputs.get(f"{prefix}scores", np.ones(len(boxes))), dtype=np.float64)
    labels = np.asarray(outputs.get(f"{prefix}labels", np.zeros(len(boxes))), dtype=np.int64)
    return boxes, scores.reshape(-1), labels.reshape(-1)


def _decode_raw(head: np.ndarray) -> tuple[np.ndarray, ...]:
    """One image's raw head → detections after a score threshold and NMS."""
    from torchvision.ops import batched_nms

    t = torch.as_tensor(head, dtype=torch.float32)
    if t.shape[0] < t.shape[1]:  # (4 + classes, anchors): YOLOv8's layout
        t = t.T
    cx, cy, w, h = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    scores, labels = t[:, 4:].max(1)
    keep = scores > RAW_SCORE_THRESHOLD
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = batched_nms(boxes, scores, labels, RAW_NMS_IOU)[:MAX_DETECTIONS]
    return (boxes[kept].double().numpy(), scores[kept].double().numpy(),
            labels[kept].numpy().astype(np.int64))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _match(ref: tuple[np.ndarray, ...], art: tuple[np.ndarray, ...]) -> tuple[int, list[float]]:
    """Greedy matching, highest reference score first: (matches, their score differences)."""
    used = np.zeros(len(art[0]), dtype=bool)
    matched, score_diffs = 0, []
    for i in np.argsort(-ref[1]):
        if not len(art[0]):
            break
        iou = _iou(ref[0][i], art[0])
        iou[(art[2] != ref[2][i]) | used] = -1
        j = int(iou.argmax())
        if iou[j] >= MATCH_IOU and abs(art[1][j] - ref[1][i]) <= SCORE_TOLERANCE:
            used[j] = True
            matched += 1
            score_diffs.append(float(abs(art[1][j] - ref[1][i])))
    return matched, score_diffs


def detection_agreement(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]
                        ) -> tuple[float, dict[str, Any]]:
    """(agreement, record) of the artifact's detections with the reference's."""
    ref_dets, art_dets = detections(ref), detections(out)
    matched = total = n_ref = n_art = 0
    diffs: list[float] = []
    for r, a in zip(ref_dets, art_dets):
        m, d = _match(r, a)
        matched, diffs = matched + m, diffs + d
        total += max(len(r[0]), len(a[0]))
        n_ref, n_art = n_ref + len(r[0]), n_art + len(a[0])
    value = matched / total if total else 1.0
    return float(value), {"reference_detections": n_ref, "artifact_detections": n_art,
                          "matched": matched, "match_iou": MATCH_IOU,
                          "score_tolerance": SCORE_TOLERANCE,
                          "max_score_diff": max(diffs) if diffs else 0.0}


__all__ = ["MATCH_IOU", "SCORE_TOLERANCE", "detection_agreement", "detections"]
