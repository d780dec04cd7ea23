"""The simulated model's own activation quantizers written into the INT8 ONNX file.

ONNX Runtime's quantizer calibrates the exported float graph again, on the same samples with
the same method, but the float activations it sees differ from torch's by float rounding, so
the ranges differ in their last digits (a percentile lands on a neighbouring value) and a zero
point can round the other way (measured on MobileNetV2: 127 vs 128, scales 1e-7 apart on
every layer). Each such difference moves values across rounding boundaries, and in a network
that amplifies small perturbations the file and its simulation end up 30 steps apart. Here each
:class:`~edgecompress.quant.fakequant.ActQuant` of the simulated model is matched to the ONNX
tensor it quantizes — by value: the simulated model run as the float model it simulates gives
each quantizer's input, the float graph gives every tensor, and the two agree to float rounding —
and its exact scale and zero point go to ``quantize_static`` as ``TensorQuantOverrides``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("edgecompress")

MATCH_TOLERANCE = 1e-3  # max |diff| / max |value|: float rounding, not another tensor


def recipe_overrides(proto: Any, reference: nn.Module, samples: Any,
                     feeds: dict[str, np.ndarray], signed: bool,
                     n: int = 2) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """``{onnx tensor: [{"scale", "zero_point"}]}`` for every quantizer of ``reference`` (the
    simulated INT8 model) found in the float graph ``proto``; and counts for the notes. When
    either model cannot be run so, nothing (ORT's own calibration then stands, and the parity
    check measures the difference)."""
    try:
        captured = _quantizer_inputs(reference, samples, n)
        tensors = _graph_tensors(proto, {k: v[:n] for k, v in feeds.items()})
    except Exception as exc:  # noqa: BLE001 - torch and ORT raise many kinds of errors
        log.info("ONNX INT8: the simulated model's scales were not written (%s: %s)",
                 type(exc).__name__, str(exc)[:200])
        return {}, {"quantizers": 0, "matched": 0, "error": type(exc).__name__}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, value in tensors.items():
        by_shape.setdefault(value.shape, []).append(name)
    overrides: dict[str, list[dict[str, Any]]] = {}
    matched = 0
    for quantizer, value in captured:
        names = _matches(value, by_shape.get(value.shape, []), tensors)
        if not names:
            continue
        matched += 1
        scale, zp = _qparams(quantizer, signed)
        for name in names:
            overrides[name] = [{"scale": scale, "zero_point": zp}]
    return overrides, {"quantizers": len(captured), "matched": matched,
                       "tensors_overridden": len(overrides)}


def _qparams(quantizer: Any, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    from ..quant.fakequant import act_qparams

    scale, zp = act_qparams(quantizer.lo, quantizer.hi)
    z = int(zp)
    return (np.array(float(scale), dtype=np.float32),
            np.array(z, dtype=np.int8) if signed else np.array(z + 128, dtype=np.uint8))


@torch.no_grad()
def _quantizer_inputs(reference: nn.Module, samples: Any, n: int) -> list[tuple[Any, np.ndarray]]:
    """Each ready quantizer called once on the float run, with the value it was given."""
    from ..data.inputs import call_model, head
    from ..quant.fakequant import ActQuant, float_numerics

    quantizers = {id(m): m for m in reference.modules() if isinstance(m, ActQuant) and m.ready}
    seen: dict[int, list[np.ndarray]] = {}

    def hook(module: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            seen.setdefault(id(module), []).append(args[0].detach().float().cpu().numpy())

    handles = [q.register_forward_pre_hook(hook) for q in quantizers.values()]
    was_training = reference.training
    reference.eval()
    try:
        with float_numerics(reference):
            call_model(reference, head(samples, n))
    finally:
        for h in handles:
            h.remove()
        reference.train(was_training)
    return [(quantizers[k], v[0]) for k, v in seen.items() if len(v) == 1]


def _graph_tensors(proto: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float tensor of the graph (inputs included) on ``feeds``, run as written."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    have = {o.name for o in model.graph.output}
    inits = {t.name for t in model.graph.initializer}
    for info in model.graph.value_info:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT and info.name not in have \
                and info.name not in inits:
            model.graph.output.append(info)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feeds)))
    values.update({k: v for k, v in feeds.items() if v.dtype == np.float32})
    return {k: v for k, v in values.items()
            if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.size}


def _matches(value: np.ndarray, names: list[str], tensors: dict[str, np.ndarray]) -> list[str]:
    """The graph tensors holding ``value`` up to float rounding (an Identity's input and
    output both do); none when the value is not finite or nothing is close."""
    if not np.isfinite(value).all():
        return []
    scale = max(float(np.abs(value).max()), 1e-12)
    errors = {}
    for name in names:
        other = tensors[name]
        if np.isfinite(other).all():
            errors[name] = float(np.abs(other - value).max()) / scale
    return [name for name, err in errors.items() if err < MATCH_TOLERANCE]
