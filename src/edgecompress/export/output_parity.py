"""Per-output parity: how far each named output of an artifact is from its reference.

Every output is compared element-wise (max and mean |diff|), relative to its spread (max |diff|
over max − min of the reference) and by cosine similarity, and is held to a bound per precision:

- ``fp32`` / ``fp16``: max |diff| ≤ ``rel`` × max(1, max |reference|) (``tolerance=`` overrides
  ``rel``);
- INT8: max |diff| ≤ ``INT8_MAX_STEPS`` steps and mean |diff| ≤ ``INT8_MEAN_STEPS`` steps of the
  output's own quantization step — the recipe's range of the layer producing it when the recipe
  has one that covers the reference, else the reference output's range (widened to hold 0,
  as every INT8 range is) / 255. An INT8 artifact
  differs from its simulated model by rounding (one step at a time, accumulated through the
  layers); a wrong scale or a broken layer costs many steps. An output of more than
  ``LARGE_OUTPUT`` elements (a detector's raw head: thousands of anchors; a segmentation map) is
  held to the max bound at its ``LARGE_OUTPUT_QUANTILE`` quantile of |diff| instead of its single
  largest element — rounding accumulated over half a million values has a tail no faithful
  file avoids (a trained YOLOv8n INT8 head: 18–28 steps max, mAP@0.5 within 1 point); the mean
  bound and the task metric still judge all of them, and the true max is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

# (relative bound on max |diff| for float precisions)
FLOAT_BOUNDS: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2}
# measured on the digits CNN / ResNet: ONNX ≤ 1.04 steps max, TFLite ≤ 3.1 max and 0.58 mean
INT8_MAX_STEPS = 8.0
INT8_MEAN_STEPS = 1.5
LARGE_OUTPUT = 65536
LARGE_OUTPUT_QUANTILE = 0.999


@dataclass
class OutputParity:
    """The comparison of one named output."""

    name: str
    shape: list[int]
    max_abs_diff: float
    mean_abs_diff: float
    rel_error: float  # max |diff| / (max − min of the reference)
    cosine: float
    bound: float | None  # max |diff| allowed (None: not bounded, e.g. detection boxes)
    step: float | None = None  # INT8: the output's quantization step
    step_source: str | None = None
    passed: bool = True
    reason: str | None = None
    tail_abs_diff: float | None = None  # large INT8 outputs: the quantile of |diff| judged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precision_class(precision: str) -> str:
    """``fp32``, ``fp16`` or ``int8`` (weight-only and static/dynamic INT8 alike)."""
    if precision.startswith("int"):
        return "int8"
    return precision if precision in FLOAT_BOUNDS else "fp32"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened (1.0 for two all-zero tensors)."""
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def output_step(ref: np.ndarray, recipe_range: Any = None) -> tuple[float, str]:
    """The quantization step of an output and where it came from.

    ``recipe_range`` ((lo, hi) of the layer producing the output) is used when the reference
    lies inside it (the simulated model clamps its quantized outputs to that range).
    """
    lo, hi = float(np.min(ref)), float(np.max(ref))
    # several candidates (keras26): the last layer's range, then a final Softmax's [0, 1]
    candidates = recipe_range if isinstance(recipe_range, list) else [recipe_range]
    for candidate in candidates:
        if candidate is None:
            continue
        r_lo, r_hi = (float(v) for v in candidate)
        slack = 1e-3 * max(1.0, r_hi - r_lo)
        if r_hi > r_lo and lo >= r_lo - slack and hi <= r_hi + slack:
            return (r_hi - r_lo) / 255.0, "recipe range"
    # an INT8 tensor's range always holds 0 (ORT and LiteRT widen it to), so a near-constant
    # output far from 0 (a random-init classifier's logits) still has a step of |value| / 255
    return max(max(hi, 0.0) - min(lo, 0.0), 1e-12) / 255.0, "reference range / 255"


def compare_output(name: str, ref: np.ndarray, out: np.ndarray, precision: str,
                   tolerance: float | None = None, recipe_range: Any = None,
                   bounded: bool = True) -> OutputParity:
    """One output of the artifact against the reference, judged by the precision's bound."""
    if ref.shape != out.shape:
        return OutputParity(name, list(ref.shape), float("inf"), float("inf"), float("inf"), 0.0,
                            None, passed=not bounded,
                            reason=f"shape {list(out.shape)} != reference {list(ref.shape)}")
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = np.abs(ref64 - out64)
    finite = bool(np.isfinite(out64).all() or not np.isfinite(ref64).all())
    max_diff = float(diff.max()) if diff.size else 0.0
    mean_diff = float(diff.mean()) if diff.size else 0.0
    spread = float(ref64.max() - ref64.min()) if ref.size else 0.0
    record = OutputParity(name, list(ref.shape), max_diff, mean_diff,
                          max_diff / spread if spread > 0 else (0.0 if max_diff == 0 else
                                                                float("inf")),
                          cosine(ref64, out64), None)
    if not bounded or not ref.size:
        return record
    if diff.size > LARGE_OUTPUT and precision_class(precision) == "int8":
        record.tail_abs_diff = float(np.quantile(diff, LARGE_OUTPUT_QUANTILE))
    _bound(record, ref64, precision, tolerance, recipe_range)
    if not finite:
        record.passed, record.reason = False, "the artifact gives non-finite values"
    return record


def _bound(record: OutputParity, ref: np.ndarray, precision: str, tolerance: float | None,
           recipe_range: Any) -> None:
    kind = precision_class(precision)
    if kind != "int8" or tolerance is not None:
        rel = FLOAT_BOUNDS.get(kind, FLOAT_BOUNDS["fp32"]) if tolerance is None else tolerance
        record.bound = rel * max(1.0, float(np.abs(ref).max()))
        if record.max_abs_diff > record.bound:
            record.passed = False
            record.reason = f"max|diff| {record.max_abs_diff:.3g} > {record.bound:.3g}"
        return
    step, source = output_step(ref, recipe_range)
    record.step, record.step_source, record.bound = step, source, INT8_MAX_STEPS * step
    judged = record.max_abs_diff if record.tail_abs_diff is None else record.tail_abs_diff
    what = ("max|diff|" if record.tail_abs_diff is None
            else f"{LARGE_OUTPUT_QUANTILE:.1%} quantile of |diff|")
    if judged > record.bound:
        record.passed = False
        record.reason = (f"{what} {judged:.3g} = {judged / step:.1f} quantization steps > "
                         f"{INT8_MAX_STEPS:g}")
    elif record.mean_abs_diff > INT8_MEAN_STEPS * step:
        record.passed = False
        record.reason = (f"mean|diff| {record.mean_abs_diff:.3g} = "
                         f"{record.mean_abs_diff / step:.1f} quantization steps > "
                         f"{INT8_MEAN_STEPS:g}")


def pair_outputs(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]
                 ) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, reference, artifact) per reference output: by name, else by position when the
    artifact names its outputs differently but has as many (a format that renames them)."""
    if set(ref) <= set(out):
        return [(k, v, out[k]) for k, v in ref.items()]
    if len(ref) == len(out):
        return [(k, v, o) for (k, v), o in zip(ref.items(), out.values())]
    if len(out) == 1 and len(ref) >= 1:  # a runner without run_named gives its first output
        first = next(iter(ref))
        return [(first, ref[first], next(iter(out.values())))]
    return [(k, v, out.get(k)) for k, v in ref.items()]


def recipe_output_range(recipe: Any, names: list[str]) -> dict[str, Any]:
    """The recipe range of the layer producing the model's output, for a single-output model
    (the last layer in execution order; :func:`output_step` checks it covers the reference)."""
    if recipe is None or len(names) != 1 or not getattr(recipe, "layer_order", None):
        return {}
    ranges = getattr(recipe, "ranges", {})
    found = [ranges.get(f"{recipe.layer_order[-1][0]}:out")]
    # a classifier ending in Softmax: ORT quantizes its output on [0, 1] whatever calibration
    # saw, and so does the simulated model's quantizer after it; output_step takes the first
    # candidate that covers the reference (keras26)
    softmax = [v for k, v in ranges.items() if k.endswith("_q:out") and "softmax" in k.lower()
               and tuple(v) == (0.0, 1.0)]
    found += softmax[:1] if len(softmax) == 1 else []
    found = [f for f in found if f is not None]
    return {names[0]: found} if found else {}


__all__ = ["FLOAT_BOUNDS", "INT8_MAX_STEPS", "INT8_MEAN_STEPS", "OutputParity", "compare_output",
           "cosine", "output_step", "pair_outputs", "precision_class", "recipe_output_range"]
