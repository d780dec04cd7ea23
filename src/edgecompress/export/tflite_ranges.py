"""Carry a static INT8 recipe's activation ranges into ai-edge-quantizer's calibration.

The recipe keys its ranges by torch layer (``"layer1.0.conv1:out"``), but litert-torch's graph
names tensors after mangled module paths and fuses ops (a conv and its ReLU become one
``CONV_2D``), so a lookup by name finds nothing reliable. Both models are instead run on the
same input and each recipe range goes to the TFLite tensor that holds the same values (NHWC
or NCHW). Without this, TFLite re-calibrated min/max ranges and ignored what QAT had learned
or what the recipe's percentile/entropy method chose, which is why it agreed less with the
simulated INT8 model than ONNX and TorchScript did.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import require
from ..quant.sharing import output_modes

# A value match must be exact up to float rounding; the tolerance scales with the tensor.
_RTOL = 1e-3


def recipe_tensor_ranges(model: nn.Module, sample: torch.Tensor, float_path: Path,
                         ranges: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """TFLite tensor name → the recipe's ``(lo, hi)`` for the tensors found in both models.

    One TFLite tensor holds one quantization, where the simulated model may quantize a value
    twice (a layer's output, then the next layer's input): the producer's ``:out`` range wins,
    since the simulation applies it first, and several ``:in`` ranges of one tensor are united
    (the TorchScript export's ``_recipe_range`` makes the same choice)."""
    refs = _torch_activations(model, sample, ranges)
    tensors = _tflite_activations(float_path, sample)
    outs: dict[str, list[Any]] = {}
    ins: dict[str, list[Any]] = {}
    for key, ref in refs.items():
        for name, values in tensors.items():
            if _holds(values, ref):
                (outs if key.endswith(":out") else ins).setdefault(name, []).append(ranges[key])
    return {name: _union(outs.get(name) or ins[name]) for name in {*outs, *ins}}


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


def _torch_activations(model: nn.Module, sample: torch.Tensor,
                       ranges: dict[str, Any]) -> dict[str, np.ndarray]:
    """The float values each recipe range was measured on: a layer's input, or its output
    after the ReLU the simulated model fuses into it."""
    modules = dict(model.named_modules())
    keys = [k for k in ranges if k.rsplit(":", 1)[0] in modules]
    modes = output_modes(model, {k.rsplit(":", 1)[0] for k in keys})
    found: dict[str, np.ndarray] = {}
    hooks = []
    for key in keys:
        name, side = key.rsplit(":", 1)
        if side == "in":
            hooks.append(modules[name].register_forward_pre_hook(
                lambda _m, args, k=key: found.__setitem__(k, args[0].detach().numpy())))
        else:
            relu = modes.get(name) == "relu"
            hooks.append(modules[name].register_forward_hook(
                lambda _m, _a, out, k=key, r=relu: found.__setitem__(
                    k, (torch.relu(out) if r else out).detach().numpy())))
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return found


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


def _union(found: list[Any]) -> tuple[float, float]:
    return min(float(r[0]) for r in found), max(float(r[1]) for r in found)
