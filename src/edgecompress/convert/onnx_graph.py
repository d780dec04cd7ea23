"""ONNX-side preparation of a graph before it becomes a torch module.

A few steps, each small: refuse the ops onnx2torch cannot convert (naming them), let ONNX
Runtime's basic graph optimizations fold what exporters leave unfused (a Keras BatchNorm arrives
as Mul + Add after the convolution, a Dense as MatMul + Add; folded they become the Conv and
Gemm that torch turns into ``nn.Conv2d`` / ``nn.Linear``, the layers Torch-Pruning and our PTQ
work on), and turn whole-map AveragePools into GlobalAveragePool and batch-keeping Reshapes
into ``Flatten`` (a Reshape to a constant
``[-1, 64]`` would break as soon as pruning removes a channel).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeCompressError

ONNX_DOMAINS = ("", "ai.onnx")


class ConversionError(EdgeCompressError, ValueError):
    """A model could not be converted to a torch module faithfully."""


def load_proto(model_or_path: Any) -> Any:
    """An ``onnx.ModelProto`` from a proto, a path or bytes (checked by onnx's checker)."""
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        proto = model_or_path
    elif isinstance(model_or_path, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model_or_path))
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise ConfigError(f"from_onnx: {path} is not a file; give an .onnx file or an "
                              f"onnx.ModelProto")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise ConversionError(f"{path} is not a readable ONNX file: {exc}") from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"the ONNX model is not valid ({exc}); re-export it") from exc
    return proto


def opset_of(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ONNX_DOMAINS), 0)


def unsupported_ops(proto: Any) -> list[str]:
    """``op_type`` (and domain) of every node onnx2torch has no converter for, sorted."""
    from onnx2torch.node_converters.registry import get_converter

    opset, missing = opset_of(proto), set()
    for node in proto.graph.node:
        domain = node.domain or ""
        try:
            get_converter(node.op_type, opset if domain in ONNX_DOMAINS else 1, domain or "")
        except Exception:  # noqa: BLE001 - NotImplementedError, or no schema at all
            missing.add(node.op_type if not domain else f"{domain}.{node.op_type}")
    return sorted(missing)


def check_convertible(proto: Any) -> None:
    """ConversionError naming every op that cannot become torch code."""
    missing = unsupported_ops(proto)
    if missing:
        raise ConversionError(
            f"the ONNX graph holds op(s) no torch conversion exists for: {', '.join(missing)} "
            f"(opset {opset_of(proto)}). Re-export the model without them (e.g. another opset, "
            f"or replace the layer), or compress the ONNX file as it is with "
            f"ec.passes.QuantizeDynamic / the ONNX exporter's own quantizer")


def optimize(proto: Any, keep_batchnorm: bool = False) -> Any:
    """ONNX Runtime's basic (standard-ONNX-only) optimizations: constant folding, Conv+Mul/Add
    and Conv+BatchNorm fusion (not with ``keep_batchnorm``), MatMul+Add -> Gemm. The result is
    still a plain ONNX graph."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(proto, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3  # it lists every constant it folded away
        opts.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConvBNFusion"] if keep_batchnorm else None)
        out = onnx.load(str(dst))
    keep = [o for o in out.opset_import if o.domain in ONNX_DOMAINS]
    del out.opset_import[:]
    out.opset_import.extend(keep)  # ORT lists every domain it knows; none is used here
    return out


def _shapes(proto: Any) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.graph.value_info, *inferred.graph.input)}


def pools_to_global(proto: Any) -> int:
    """Replace each AveragePool whose window is its whole (known) input by GlobalAveragePool:
    Keras' ``AveragePooling2D(8)`` on an 8×8 map is a global pool, and as one it keeps working
    when the input size changes and quantizes as every other global pool does."""
    from onnx import helper

    shapes, changed = _shapes(proto), 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        if not shape or len(shape) != 4 or list(attrs.get("kernel_shape", [])) != shape[2:]:
            continue
        if any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0):
            continue
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                name=node.name)
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, pool)
        changed += 1
    return changed


def reshapes_to_flatten(proto: Any) -> int:
    """Replace each Reshape to a constant ``[-1|0|N, k]`` whose input is ``[N, ...]`` with
    ``prod(...) == k`` by ``Flatten(axis=1)`` (same values, no channel count baked in)."""
    from onnx import helper, numpy_helper

    shapes = _shapes(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    changed = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "Reshape" or node.input[1] not in consts:
            continue
        target, shape = consts[node.input[1]].tolist(), shapes.get(node.input[0])
        if len(target) != 2 or not shape or len(shape) < 3 or None in shape[1:]:
            continue
        if target[0] not in (-1, 0, shape[0]) or target[1] != int(np.prod(shape[1:])):
            continue
        flat = helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name,
                                axis=1)
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, flat)
        changed += 1
    return changed


def matmuls_to_gemm(proto: Any) -> int:
    """Replace each MatMul of a 2-D input by a constant 2-D weight with Gemm (same values).

    A Keras Dense whose bias tf2onnx dropped (or that has none) arrives as a bare MatMul, which
    onnx2torch turns into ``torch.matmul`` with a constant: no ``nn.Linear``, so PTQ did not
    simulate its int8 weights while ONNX Runtime's quantizer did quantize the MatMul (a
    two-input Keras model: 12.9 output steps between its INT8 file and the simulated model). A
    Gemm with a constant weight becomes ``nn.Linear``."""
    from onnx import helper

    shapes, weights = _shapes(proto), {t.name for t in proto.graph.initializer if len(t.dims) == 2}
    changed = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        if len(shapes.get(node.input[0]) or []) != 2:
            continue
        gemm = helper.make_node("Gemm", list(node.input), list(node.output), name=node.name)
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, gemm)
        changed += 1
    return changed


def strip_final_softmax(proto: Any) -> int | None:
    """Drop a Softmax producing the graph's only output, so the model returns logits (what
    cross-entropy fine-tuning and distillation train on). Its axis, or None when there was none."""
    from onnx import helper

    outputs = proto.graph.output
    if len(outputs) != 1:
        return None
    node = next((n for n in proto.graph.node if outputs[0].name in n.output), None)
    if node is None or node.op_type != "Softmax":
        return None
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    node.op_type = "Identity"  # keeps every tensor name; onnx2torch makes it nn.Identity
    del node.attribute[:]
    return int(axis)


def prepare(proto: Any, logits: bool, keep_batchnorm: bool = False) -> tuple[Any, dict[str, Any]]:
    """Check, optimize and clean ``proto`` for onnx2torch; notes say what changed."""
    check_convertible(proto)
    notes: dict[str, Any] = {}
    if keep_batchnorm:
        from .batchnorm import mul_add_to_batchnorm

        proto = copy.deepcopy(proto)
        notes["batchnorms_kept"] = mul_add_to_batchnorm(proto)
    out = optimize(proto, keep_batchnorm)
    notes |= {"pools_to_global": pools_to_global(out),
              "reshapes_to_flatten": reshapes_to_flatten(out), "matmuls_to_gemm": matmuls_to_gemm(out)}
    if logits:
        notes["dropped_final_softmax_axis"] = strip_final_softmax(out)
    check_convertible(out)
    return out, notes
