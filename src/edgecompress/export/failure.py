"""What an artifact that fails verification does: refused by default (never written), or kept
on request (``on_parity_fail="keep"``) and then marked FAIL in its metadata and the report."""

from __future__ import annotations

import logging
from typing import Any

from ..artifact import Artifact
from ..errors import ParityError

log = logging.getLogger("edgecompress")

KEEP = ("keep", "warn")  # "warn" is the older name of "keep"


def judge(artifact: Artifact, opts: Any, message: str) -> bool:
    """True when the artifact passed; a failed one raises :class:`ParityError` unless the
    options keep it (then it is logged and False is returned)."""
    if artifact.parity is None or artifact.parity.passed:
        return True
    if opts.on_parity_fail not in KEEP:
        raise ParityError(message)
    log.warning("%s. Kept because on_parity_fail=%r: it is marked FAIL in its metadata",
                message, opts.on_parity_fail)
    return False


def mark_failed(artifact: Artifact) -> None:
    """Mark a kept failed artifact so its metadata, the report and ``ec.load`` say FAIL."""
    assert artifact.parity is not None
    verdict = "FAIL: " + ("; ".join(artifact.parity.failures) or str(artifact.parity))
    artifact.metadata["verification"] = verdict
    artifact.notes["verification"] = verdict


def failure_advice(artifact: Artifact, recipe: Any) -> str:
    """What to try after a failed verification, for the artifact's precision."""
    tips = []
    if artifact.precision.startswith("int8-static"):
        tips.append("calibrate with another method (QuantizePTQ(method='percentile' or "
                    "'entropy' or 'minmax'))")
        tips.append(f"keep sensitive layers in float (skip={_skip_hint(recipe)})")
        if artifact.format == "onnx":
            tips.append("let ONNX Runtime calibrate every tensor on its own values "
                        "(export option calibration='onnxruntime')")
        if not getattr(recipe, "layers_only", False):  # byom23: DeiT 35 steps -> 9e-8 with it
            tips.append("quantize the layers only, keeping the ops between them float "
                        "(QuantizePTQ(layers_only=True))")
        tips.append("or quantize dynamically (QuantizeDynamic)")
    elif artifact.precision.startswith("int"):
        tips.append("more bits or another weight type" if not getattr(recipe, "layer_order", ())
                    else f"keep sensitive layers in float (skip={_skip_hint(recipe)})")
    elif artifact.precision == "fp16":
        tips.append("export in fp32 (fp16=False)")
    else:
        tips.append("another format or opset; a converter that changes a float model's outputs "
                    "is worth a bug report")
    tips.append("if the bound does not suit your model, declare its task (task=...) or judge "
                "it with your own metric= and metric_threshold=")
    tips.append("to write it anyway, marked FAIL, pass on_parity_fail='keep'")
    return ". Try: " + "; ".join(tips)


def _skip_hint(recipe: Any) -> str:
    """The first and last quantized layers, the usual sensitive ones, as a ``skip=`` list."""
    order = [name for name, _ in getattr(recipe, "layer_order", ())]
    names = list(dict.fromkeys([order[0], order[-1]])) if order else ["<layer name>"]
    return "[" + ", ".join(repr(n) for n in names) + "]"


__all__ = ["KEEP", "failure_advice", "judge", "mark_failed"]
