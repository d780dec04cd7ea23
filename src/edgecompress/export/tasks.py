"""Task metrics: what agreement with the reference means for the task a model does.

A task is declared (``task="segment"`` on export) or inferred from the reference outputs:
detection when some output is named ``boxes`` (torchvision's ``boxes`` / ``scores`` /
``labels``), ``causal_lm`` for ``logits`` of shape (N, T, vocab), ``classify`` for (N, C)
logits, ``segment`` for (N, C, H, W) maps, ``embedding`` (also regression) otherwise.

Each metric compares the artifact's outputs with the reference's (higher is better) and is held
to a minimum per precision (:data:`MIN_METRIC`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError
from .output_parity import cosine, precision_class

TASKS = ("classify", "detect", "segment", "causal_lm", "embedding")
Outputs = Mapping[str, np.ndarray]

# task -> (metric name, {precision class: minimum})
MIN_METRIC: dict[str, tuple[str, dict[str, float]]] = {
    "classify": ("top1_agreement", {"fp32": 1.0, "fp16": 0.98, "int8": 0.98}),
    "segment": ("pixel_agreement", {"fp32": 0.99, "fp16": 0.97, "int8": 0.90}),
    "causal_lm": ("next_token_agreement", {"fp32": 0.99, "fp16": 0.98, "int8": 0.90}),
    "embedding": ("cosine", {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}),
    "detect": ("detection_agreement", {"fp32": 0.98, "fp16": 0.95, "int8": 0.85}),
}


@dataclass
class TaskResult:
    """The task metric of one verification."""

    task: str
    metric: str
    value: float
    minimum: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. mIoU, perplexity delta

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.minimum)


def primary(outputs: Outputs) -> tuple[str, np.ndarray]:
    """The output a task metric reads: ``logits`` / ``out`` when present, else the first."""
    for key in ("logits", "out", "output"):
        if key in outputs:
            return key, outputs[key]
    name = next(iter(outputs))
    return name, outputs[name]


def infer_task(outputs: Outputs) -> str:
    """The task the reference outputs look like (see the module docstring)."""
    if any(k == "boxes" or k.endswith("_boxes") for k in outputs):
        return "detect"
    name, out = primary(outputs)
    if not np.issubdtype(out.dtype, np.floating):
        return "embedding"
    if out.ndim == 3 and name == "logits":
        return "causal_lm"
    if out.ndim == 2 and out.shape[1] > 1:
        return "classify"
    if out.ndim == 4 and out.shape[1] > 1:
        return "segment"
    return "embedding"


def task_metric(task: str, ref: Outputs, out: Outputs, precision: str,
                tie_margin: float = 0.0, detection: Mapping[str, Any] | None = None) -> TaskResult:
    """The task metric of ``out`` against ``ref`` and its minimum at ``precision``.

    ``tie_margin`` (classification): a top-1 flip between two classes whose reference scores
    differ by at most this much is a tie, not a disagreement (near-tied logits of an untrained
    or uncertain model flip within any tolerance; the per-output bound still judges the values).
    Detection: reference detections scored within it of the score threshold or of a box NMS
    kept instead are optional. ``detection``: the artifact's decode + NMS spec (raw heads).
    """
    if task not in MIN_METRIC:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    name, minimums = MIN_METRIC[task]
    if task == "classify":
        value, extra = _classify(ref, out, tie_margin)
    elif task == "detect":
        value, extra = _detect(ref, out, detection, tie_margin)
    else:
        value, extra = METRICS[task](ref, out)
    return TaskResult(task, name, value, minimums[precision_class(precision)], extra)


def _classify(ref: Outputs, out: Outputs, tie_margin: float = 0.0) -> tuple[float, dict[str, Any]]:
    r, o = _primary_pair(ref, out)
    r, o = r.reshape(r.shape[0], -1), o.reshape(o.shape[0], -1)
    rt, ot = r.argmax(1), o.argmax(1)
    rows = np.arange(len(rt))
    ties = (rt != ot) & (r[rows, rt] - r[rows, ot] <= tie_margin)
    strict = float((rt == ot).mean()) if len(rt) else 1.0
    return float(((rt == ot) | ties).mean()) if len(rt) else 1.0, {
        "strict_top1_agreement": strict, "tie_flips": int(ties.sum()), "tie_margin": tie_margin}


def _segment(ref: Outputs, out: Outputs) -> tuple[float, dict[str, Any]]:
    r, o = _primary_pair(ref, out)
    rp, op = r.argmax(1), o.argmax(1)
    ious = []
    for c in range(r.shape[1]):
        union = np.logical_or(rp == c, op == c).sum()
        if union:
            ious.append(np.logical_and(rp == c, op == c).sum() / union)
    return float((rp == op).mean()), {"miou": float(np.mean(ious)) if ious else 1.0,
                                      "classes": int(r.shape[1])}


def _causal_lm(ref: Outputs, out: Outputs) -> tuple[float, dict[str, Any]]:
    from ..lm.metrics import next_token_agreement

    r, o = _primary_pair(ref, out)
    return next_token_agreement(o, r), {}


def _embedding(ref: Outputs, out: Outputs) -> tuple[float, dict[str, Any]]:
    r, o = _primary_pair(ref, out)
    per_sample = [cosine(a, b) for a, b in zip(r.reshape(r.shape[0], -1), o.reshape(o.shape[0], -1))]
    return float(min(per_sample)) if per_sample else 1.0, {
        "mean_cosine": float(np.mean(per_sample)) if per_sample else 1.0}


def _detect(ref: Outputs, out: Outputs, detection: Mapping[str, Any] | None = None,
            tie_margin: float = 0.0) -> tuple[float, dict[str, Any]]:
    from .detect_metric import detection_agreement

    return detection_agreement(ref, out, detection, tie_margin)


def _primary_pair(ref: Outputs, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
    name, r = primary(ref)
    o = out[name] if name in out else next(iter(out.values()))
    if o.shape != r.shape:
        raise ValueError(f"output {name!r}: shape {list(o.shape)} != reference {list(r.shape)}")
    return r.astype(np.float64), o.astype(np.float64)


METRICS: dict[str, Callable[[Outputs, Outputs], tuple[float, dict[str, Any]]]] = {
    "classify": _classify, "segment": _segment, "causal_lm": _causal_lm,
    "embedding": _embedding, "detect": _detect,
}


def user_metric(metric: Callable[[Outputs, Outputs], float], threshold: float | None,
                ref: Outputs, out: Outputs) -> dict[str, Any]:
    """The user's ``metric(reference outputs, artifact outputs) -> float`` (higher is better)."""
    value = metric(dict(ref), dict(out))
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"metric= must return a number (higher is better); "
                          f"{getattr(metric, '__name__', metric)!r} returned "
                          f"{type(value).__name__}") from None
    passed = threshold is None or value >= threshold
    return {"name": getattr(metric, "__name__", "metric"), "value": value,
            "threshold": threshold, "passed": bool(passed)}


__all__ = ["MIN_METRIC", "TASKS", "TaskResult", "infer_task", "primary", "task_metric",
           "user_metric"]
