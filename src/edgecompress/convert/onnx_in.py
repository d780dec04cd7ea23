"""``ec.from_onnx``: an ONNX model as a torch module the whole pipeline accepts.

The graph is checked and cleaned on the ONNX side (:mod:`.onnx_graph`), converted with
onnx2torch to a ``torch.fx.GraphModule`` of ordinary ``nn.Conv2d`` / ``nn.Linear`` layers,
cleaned on the torch side (:mod:`.torch_graph`), and its outputs are compared with the original
(ONNX Runtime on the original file) on the caller's samples; the facts travel on the module
(:mod:`.source`) into the report's ``input`` stage.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._extras import require
from ..errors import ConfigError
from .onnx_graph import ConversionError, check_convertible, load_proto, prepare
from .source import attach
from .torch_graph import simplify

log = logging.getLogger("edgecompress")

Samples = Any  # an array/tensor, or a sequence of them (one per model input)


def from_onnx(model_or_path: Any, samples: Samples = None, *, logits: bool = False,
              layout: str | None = None, tolerance: float = 1e-4,
              batchnorm: str = "fold") -> nn.Module:
    """Convert an ONNX model (path, bytes or ``onnx.ModelProto``) to a torch module.

    Args:
        model_or_path: the ONNX model.
        samples: inputs to measure parity on (an array or tensor, or one per input for a model
            with several inputs), e.g. ``data.samples("val", 16)``; None: two seeded random
            inputs of the model's input shape (unknown sizes set to 32).
        logits: drop a final Softmax so the module returns logits (for fine-tuning and
            distillation); parity is then measured after a softmax on the module's output.
        layout: the layout of the model's input (e.g. ``"NHWC"``) recorded in the artifact's
            input signature; None: the data's layout.
        tolerance: the largest max |diff| accepted, relative to the outputs' magnitude (at
            least 1); a larger difference raises ConversionError.
        batchnorm: ``"fold"`` folds BatchNorm (and the Mul + Add exporters write for it) into
            the convolutions; ``"keep"`` keeps each as a trainable ``nn.BatchNorm2d`` with
            running statistics measured on ``samples`` (for fine-tuning and distillation).

    Returns:
        a ``torch.fx.GraphModule`` in eval mode; ``edgecompress_source`` on it holds the
        measured parity (``conversion_max_abs_diff``) the pipeline puts in its report.
    """
    require("onnx2torch", "onnx-in", "from_onnx")
    proto = load_proto(model_or_path)
    check_convertible(proto)  # before anything runs: the refusal names every missing op
    inputs = _as_inputs(samples, proto)
    reference = _ort_outputs(proto, inputs)
    info = {"converted_from": "onnx", "converter": _versions()}
    return convert_proto(proto, inputs, reference, info, logits=logits, layout=layout,
                         tolerance=tolerance, batchnorm=batchnorm)


def convert_proto(proto: Any, inputs: list[np.ndarray], reference: list[np.ndarray],
                  info: dict[str, Any], *, logits: bool, layout: str | None,
                  tolerance: float, batchnorm: str = "fold") -> nn.Module:
    """The shared core of from_onnx and from_keras: prepare, convert, measure, attach."""
    from onnx2torch import convert

    if batchnorm not in ("fold", "keep"):
        raise ConfigError(f"batchnorm must be 'fold' or 'keep', got {batchnorm!r}")
    prepared, notes = prepare(proto, logits, keep_batchnorm=batchnorm == "keep")
    try:
        module = convert(prepared)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises bare exceptions per op
        raise ConversionError(f"onnx2torch could not convert the graph: {type(exc).__name__}: "
                              f"{exc}") from exc
    notes.update(simplify(module))
    if batchnorm == "keep":
        from .batchnorm import restore_statistics

        notes["batchnorm_statistics_from_samples"] = restore_statistics(module, inputs)
    module.eval()
    diff = _parity(module, inputs, reference, notes.get("dropped_final_softmax_axis"))
    scale = max(1.0, max(float(np.abs(r).max()) for r in reference))
    if not diff <= tolerance * scale:
        raise ConversionError(f"the converted torch module differs from the original by "
                              f"max |diff| {diff:.3g} (tolerance {tolerance * scale:.3g}) on "
                              f"{len(inputs[0])} samples; please report the model's op list")
    log.info("converted %s model: max |diff| %.3g on %d samples", info["converted_from"], diff,
             len(inputs[0]))
    info.update({"conversion_max_abs_diff": diff, "conversion_samples": len(inputs[0]),
                 "conversion_notes": notes, "layout": layout,
                 "inputs": [{"name": i.name, "shape": _dims(i)} for i in _graph_inputs(proto)]})
    return attach(module, info)


def input_shapes(proto: Any) -> list[list[int | None]]:
    """The shape of each graph input (None for a symbolic dimension)."""
    return [_dims(i) for i in _graph_inputs(proto)]


def _graph_inputs(proto: Any) -> list[Any]:
    init = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in init]


def _dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def _as_inputs(samples: Samples, proto: Any) -> list[np.ndarray]:
    """One float/int numpy array per graph input, with the dtype the graph declares."""
    from onnx import helper

    specs = _graph_inputs(proto)
    if samples is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal([d or (2 if i == 0 else 32) for i, d in enumerate(_dims(s))]).astype(
            helper.tensor_dtype_to_np_dtype(s.type.tensor_type.elem_type)) for s in specs]
    given = list(samples) if isinstance(samples, (list, tuple)) else [samples]
    if len(given) != len(specs):
        raise ConversionError(f"the model has {len(specs)} input(s) "
                              f"({', '.join(s.name for s in specs)}) but {len(given)} sample "
                              f"array(s) were given; pass one array per input, in that order")
    return [np.asarray(g.detach().cpu() if isinstance(g, torch.Tensor) else g).astype(
        helper.tensor_dtype_to_np_dtype(s.type.tensor_type.elem_type)) for g, s in zip(given, specs)]


def _ort_outputs(proto: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return [np.asarray(o) for o in sess.run(None, feed)]


def _parity(module: nn.Module, inputs: list[np.ndarray], reference: list[np.ndarray],
            softmax_axis: int | None) -> float:
    with torch.no_grad():
        out = module(*(torch.from_numpy(x) for x in inputs))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if softmax_axis is not None:
        outs = [torch.softmax(outs[0], softmax_axis)]
    if len(outs) != len(reference):
        raise ConversionError(f"the converted module returns {len(outs)} output(s), the "
                              f"original {len(reference)}")
    return max(float(np.abs(o.numpy().reshape(r.shape) - r).max())
               for o, r in zip(outs, reference))


def _versions() -> str:
    from importlib.metadata import version

    return f"onnx2torch {version('onnx2torch')}"
