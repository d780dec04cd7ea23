"""Detection agreement: the artifact's detections matched to the reference's, after NMS.

Detections are read per image from named outputs (``boxes`` / ``scores`` / ``labels``, or
``output_<i>_boxes``... for torchvision's list of dicts: already decoded and NMS'd), or decoded
from raw outputs by the artifact's :class:`~edgecompress.detection.DetectionHead` (the
runtime's numpy decode + NMS, the same code ``runner.detect`` runs); one raw YOLO-style head
(N, 4 + classes, anchors) without a spec is decoded with :data:`RAW_HEAD`.

A reference detection is matched by an artifact detection of the same label with IoU ≥
:data:`MATCH_IOU` and a score within :data:`SCORE_TOLERANCE` (greedy, best reference first).
**Ties** (raw heads): a detection that either side may keep or drop within the output's
tolerance ``tie_margin`` is optional and counts only when matched — one scored within it of the
score threshold or of the last of a full ``max_detections`` list, or one with a same-class
candidate that overlaps it beyond the NMS IoU and scores within it (NMS may keep either). The
agreement is matched / (matched + the larger side's unmatched required detections), 1.0 when
neither side finds anything; ``strict_agreement`` counts every detection.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..detection import DetectionHead
from ..runtime.detect import candidates, raw_arrays, suppress

MATCH_IOU = 0.5
SCORE_TOLERANCE = 0.1
MIN_TIE = 1e-6  # float scores equal to this are ties even in an FP32 artifact
RAW_HEAD = DetectionHead("yolo", score_threshold=0.25, iou_threshold=0.45, max_detections=100)

Det = dict[str, np.ndarray]  # boxes, scores, labels (+ optional: bool per detection)


def detections(outputs: Mapping[str, np.ndarray], head: DetectionHead | None = None,
               tie_margin: float = 0.0) -> list[Det]:
    """Per image, the detections of a detector's outputs, each marked ``optional`` or not."""
    prefixes = [k[: -len("boxes")] for k in outputs if k == "boxes" or k.endswith("_boxes")]
    if head is None and prefixes:
        return [_named(outputs, p) for p in prefixes]
    if head is None:
        raw = next(iter(outputs.values()))
        if raw.ndim != 3:
            raise ValueError(f"detection outputs need 'boxes'/'scores'/'labels', a detection "
                             f"spec, or one raw head of shape (N, 4 + classes, anchors); got "
                             f"{list(raw.shape)}")
        head = RAW_HEAD
        if raw.shape[1] > raw.shape[2]:  # (N, anchors, 4 + classes): make it channel-first
            outputs = {"output": raw.transpose(0, 2, 1)}
    boxes, scores = raw_arrays(outputs, head)
    tie = max(float(tie_margin), MIN_TIE)
    return [_decoded(candidates(b, s, head, (1, 1)), head, tie) for b, s in zip(boxes, scores)]


def _named(outputs: Mapping[str, np.ndarray], prefix: str) -> Det:
    boxes = np.asarray(outputs[f"{prefix}boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(outputs.get(f"{prefix}scores", np.ones(len(boxes))), dtype=np.float64)
    labels = np.asarray(outputs.get(f"{prefix}labels", np.zeros(len(boxes))), dtype=np.int64)
    return {"boxes": boxes, "scores": scores.reshape(-1), "labels": labels.reshape(-1),
            "optional": np.zeros(len(boxes), dtype=bool)}


def _decoded(cands: Det, head: DetectionHead, tie: float) -> Det:
    """NMS'd detections, each optional when a tie could keep or drop it (module docstring)."""
    kept = suppress(cands, head)
    optional = kept["scores"] - head.score_threshold <= tie
    if len(kept["scores"]) >= head.max_detections:
        optional |= kept["scores"] - kept["scores"].min() <= tie
    for i in np.nonzero(~optional)[0]:
        same = cands["labels"] == kept["labels"][i]
        rivals = same & (np.abs(cands["scores"] - kept["scores"][i]) <= tie)
        overlap = _iou(kept["boxes"][i], cands["boxes"][rivals])
        optional[i] = bool(((overlap > head.iou_threshold) & (overlap < 1.0 - 1e-6)).any())
    return {**{k: v.astype(np.float64) if k != "labels" else v for k, v in kept.items()},
            "optional": optional}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _match(ref: Det, art: Det) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Greedy matching, highest reference score first: (reference matched, artifact matched,
    the matches' score differences)."""
    ref_used = np.zeros(len(ref["boxes"]), dtype=bool)
    used = np.zeros(len(art["boxes"]), dtype=bool)
    score_diffs = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        if not len(art["boxes"]):
            break
        iou = _iou(ref["boxes"][i], art["boxes"])
        iou[(art["labels"] != ref["labels"][i]) | used] = -1
        j = int(iou.argmax())
        diff = abs(art["scores"][j] - ref["scores"][i])
        if iou[j] >= MATCH_IOU and diff <= SCORE_TOLERANCE:
            used[j] = ref_used[i] = True
            score_diffs.append(float(diff))
    return ref_used, used, score_diffs


def detection_agreement(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray],
                        detection: Mapping[str, Any] | None = None, tie_margin: float = 0.0
                        ) -> tuple[float, dict[str, Any]]:
    """(agreement, record) of the artifact's detections with the reference's; ``detection``
    is the artifact's decode + NMS spec (metadata ``"detection"``) for raw-head outputs."""
    head = DetectionHead.from_dict(detection) if detection else None
    counts = dict.fromkeys(("matched", "reference_detections", "artifact_detections",
                            "optional_reference", "optional_artifact", "required_total",
                            "strict_total"), 0)
    diffs: list[float] = []
    for r, a in zip(detections(ref, head, tie_margin), detections(out, head, tie_margin)):
        r_hit, a_hit, d = _match(r, a)
        diffs += d
        m = int(r_hit.sum())
        counts["matched"] += m
        counts["reference_detections"] += len(r_hit)
        counts["artifact_detections"] += len(a_hit)
        counts["optional_reference"] += int((r["optional"] & ~r_hit).sum())
        counts["optional_artifact"] += int((a["optional"] & ~a_hit).sum())
        counts["required_total"] += m + max(int((~r_hit & ~r["optional"]).sum()),
                                            int((~a_hit & ~a["optional"]).sum()))
        counts["strict_total"] += max(len(r_hit), len(a_hit))
    matched, required, strict = (counts["matched"], counts.pop("required_total"),
                                 counts.pop("strict_total"))
    return (matched / required if required else 1.0), {
        **counts, "strict_agreement": matched / strict if strict else 1.0,
        "match_iou": MATCH_IOU, "score_tolerance": SCORE_TOLERANCE,
        "tie_margin": max(float(tie_margin), MIN_TIE) if head or not _named_outputs(ref) else 0.0,
        "max_score_diff": max(diffs) if diffs else 0.0}


def _named_outputs(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(k == "boxes" or k.endswith("_boxes") for k in outputs)


__all__ = ["MATCH_IOU", "RAW_HEAD", "SCORE_TOLERANCE", "detection_agreement", "detections"]
