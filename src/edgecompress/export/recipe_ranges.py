"""The recipe's activation ranges on the tensors of the float ONNX graph: calibrate once.

The simulated model's quantizers are named ``<layer>:in`` / ``<layer>:out`` and were calibrated
on the recipe's samples with ONNX Runtime's own algorithms (:mod:`edgecompress.quant.calibrate`).
The ONNX-based exporters need the same ranges on the graph's tensors: learned (QAT) ranges go to
ORT as ``TensorQuantOverrides``; observed (PTQ) ranges *are* the calibration, so ORT's quantizer
reads them from its calibration cache and only the tensors the simulation has no quantizer for
are calibrated again (see :func:`edgecompress.export.ort_calibrate.write_calibration_cache`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .ort_quant import SAME_SCALE_OPS

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

Range = list[float]


def tensor_ranges(proto: Any, mapping: Mapping[str, Any], recipe: "QuantRecipe",
                  relu_inputs: bool = True) -> dict[str, Range]:
    """The recipe's ranges keyed by ONNX tensor name.

    ``<layer>:in`` is the node's input; ``<layer>:out`` its output, or the output of the Relu
    consuming it when the recipe fused one (ORT removes that Relu and quantizes to its range).
    Two layers reading one tensor (a residual block's input) share one ONNX quantizer: it gets
    the union of their ranges. An input reached through Flatten, Reshape, … gets its range on
    the tensor before them, whose scale ORT reuses for their output.
    """
    consumers: dict[str, list[Any]] = {}
    producers = {out: node for node in proto.graph.node for out in node.output}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    merged: dict[str, Range] = {}
    for key, (lo, hi) in recipe.ranges.items():
        tensor = _tensor_of(key, mapping, recipe.outputs, producers, consumers)
        if tensor is None:
            continue
        old = merged.get(tensor)
        merged[tensor] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
    # QOperator drops a Relu and keeps the quantization of its input (calibrated to the Relu's
    # range), so the range must be on that input too; QDQ renames the input to the Relu's
    # output. Measured: without it QOperator ran every ReLU output on ORT's calibrated range.
    for tensor, value in list(merged.items()) if relu_inputs else ():
        relu = producers.get(tensor)
        if relu is not None and relu.op_type in ("Relu", "Clip") \
                and len(consumers[relu.input[0]]) == 1:
            merged.setdefault(relu.input[0], value)
    return merged


def _tensor_of(key: str, mapping: Mapping[str, Any], outputs: Mapping[str, Any],
               producers: dict[str, Any], consumers: dict[str, list[Any]]) -> str | None:
    layer, _, side = key.rpartition(":")
    node = mapping.get(layer)
    if node is None:
        return None
    if side == "in":
        return scale_source(node.input[0], producers)
    tensor = node.output[0]
    if outputs.get(layer) in ("relu", "relu6"):  # ReLU6 is a Clip in ONNX
        relu = [n for n in consumers.get(tensor, []) if n.op_type in ("Relu", "Clip")]
        if len(relu) != 1:
            return None
        tensor = relu[0].output[0]
    return tensor


def quant_overrides(ranges: Mapping[str, Range]) -> dict[str, list[dict[str, Any]]]:
    """``ranges`` as ORT's ``TensorQuantOverrides``."""
    return {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in ranges.items()}


def scale_source(tensor: str, producers: dict[str, Any]) -> str:
    """The tensor whose scale ``tensor`` shares in ORT's graph (through Flatten, Reshape, …)."""
    node = producers.get(tensor)
    while node is not None and node.op_type in SAME_SCALE_OPS and node.input:
        tensor = node.input[0]
        node = producers.get(tensor)
    return tensor


def float_tensors(proto: Any) -> set[str]:
    """The tensors ORT's calibrators calibrate: every float input or output of a node that is
    not an initializer (``CalibraterBase.select_tensors_to_calibrate`` with no op filter)."""
    from onnx import TensorProto

    infos = {vi.name: vi for vi in [*proto.graph.value_info, *proto.graph.output,
                                    *proto.graph.input]}
    inits = {init.name for init in proto.graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    found = set()
    for node in proto.graph.node:
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if info is not None and info.type.HasField("tensor_type") \
                    and info.type.tensor_type.elem_type in floats and name not in inits:
                found.add(name)
    return found


def shared_scale_ranges(proto: Any, known: Mapping[str, Range],
                        missing: set[str]) -> dict[str, Range]:
    """Ranges for the outputs of Flatten, Reshape, MaxPool, … whose input has one: ORT gives
    such an output its input's scale whatever was calibrated for it, so the input's range is
    what the artifact uses."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    found: dict[str, Range] = {}
    for tensor in missing:
        source = scale_source(tensor, producers)
        if source != tensor and source in known:
            found[tensor] = list(known[source])
    return found


def constant_values(proto: Any, names: set[str]) -> dict[str, np.ndarray]:
    """The values of ``Constant`` nodes' outputs among ``names`` (the same on every sample, so
    calibrating them needs no run of the graph)."""
    from onnx import numpy_helper

    found = {}
    for node in proto.graph.node:
        if node.op_type != "Constant" or node.output[0] not in names:
            continue
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            found[node.output[0]] = numpy_helper.to_array(value)
    return found
