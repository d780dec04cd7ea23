"""Carry a static INT8 recipe's activation ranges into ai-edge-quantizer's calibration.

The recipe keys its ranges by torch layer (``"layer1.0.conv1:out"``), but litert-torch's graph
names tensors after mangled module paths and fuses ops (a conv and its ReLU become one
``CONV_2D``), so a lookup by name finds nothing reliable. The simulated INT8 model (with float
numerics) and the float TFLite file are instead run on the same input and each quantizer's
range goes to the TFLite tensor that holds the same values (NHWC or NCHW). Without this,
TFLite re-calibrated min/max ranges and ignored what QAT had learned or what the recipe's
percentile/entropy method chose, which is why it agreed less with the simulated INT8 model
than ONNX and TorchScript did.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import require
from ..quant.fakequant import float_numerics
from ..quant.simulate import act_quantizers

# A value match must be exact up to float rounding; the tolerance scales with the tensor.
_RTOL = 1e-3


def recipe_tensor_ranges(simulated: nn.Module, sample: torch.Tensor,
                         float_path: Path) -> dict[str, tuple[float, float]]:
    """TFLite tensor name → ``(lo, hi)`` of the simulated model's quantizer that holds the same
    values, for the tensors found in both models.

    Every activation quantizer of the simulated INT8 model counts: the layers' inputs and
    outputs (after the ReLU they fuse) and the tensors around residual Adds, Muls, Concats and
    pools (``"<node>_q"``), which are not layers. Reading only the layers' recipe keys left
    those to ai-edge-quantizer's min/max while the simulation used the recipe's percentile
    range: on MLPerf's ResNet-8 every residual sum. One TFLite tensor holds one quantization;
    when the simulation quantizes the same values twice, the first quantizer (the producer's)
    wins."""
    refs = _quantizer_inputs(simulated, sample)
    tensors = _tflite_activations(float_path, sample)
    found: dict[str, tuple[float, float]] = {}
    for values, lo_hi in refs:
        for name, candidate in tensors.items():
            if name not in found and _holds(candidate, values):
                found[name] = lo_hi
    return found


def _quantizer_inputs(simulated: nn.Module, sample: torch.Tensor
                      ) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """(the float values each ready activation quantizer of ``simulated`` reads, its range),
    in execution order; the model runs with float numerics (float weights, no quantization),
    so the values are the float model's, as in the float TFLite file."""
    quantizers = {id(q): q for q in act_quantizers(simulated).values() if q.ready}
    ranges = {key: q.range() for key, q in quantizers.items()}
    seen: list[tuple[np.ndarray, tuple[float, float]]] = []
    hooks = [q.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].detach().float().numpy(), ranges[id(m)])))
        for q in quantizers.values()]
    try:
        with torch.no_grad(), float_numerics(simulated):
            simulated.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def apply_ranges(qsvs: dict[str, Any], imported: dict[str, tuple[float, float]]) -> int:
    """Overwrite calibrated min/max with the imported ranges (in place); returns how many."""
    count = 0
    for name, (lo, hi) in imported.items():
        old = qsvs.get(name)
        if old is None or "min" not in old:
            continue
        qsvs[name] = {**old, "min": np.full_like(old["min"], lo),
                      "max": np.full_like(old["max"], hi)}
        count += 1
    return count


def _tflite_activations(path: Path, sample: torch.Tensor) -> dict[str, np.ndarray]:
    litert = require("ai_edge_litert.interpreter", "tflite", "Importing ranges into TFLite")
    with warnings.catch_warnings():  # "preserve_all_tensors is meant for debugging"
        warnings.simplefilter("ignore")
        interp = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], sample.numpy().astype(np.float32))
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_tensor_details()
            if d["dtype"] == np.float32 and d["name"]}


def _holds(values: np.ndarray, ref: np.ndarray) -> bool:
    """True when ``values`` is ``ref`` (as NCHW or as NHWC) up to float rounding."""
    if values.size != ref.size or float(ref.std()) == 0.0:
        return False  # a constant tensor would match any other constant of its size
    tol = _RTOL * max(1.0, float(np.abs(ref).max()))
    views = [values] if values.shape == ref.shape else []
    if values.ndim == 4 and ref.ndim == 4:
        views.append(values.transpose(0, 3, 1, 2))
    return any(v.shape == ref.shape and float(np.abs(v - ref).max()) <= tol for v in views)
