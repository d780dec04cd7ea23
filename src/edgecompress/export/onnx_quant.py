"""Realise a QuantRecipe in ONNX with ONNX Runtime's own quantizer — the path ORT runs fastest.

Static recipes: ``quantize_static`` on the float graph (QDQ by default, or QOperator for a
smaller CPU-only file; per-channel int8 weights, activation
ranges the simulated model measured, reused (only tensors it has no quantizer for are
calibrated again, on the recipe's samples with its method); layers the recipe keeps
float become ``nodes_to_exclude``; QAT's learned ranges are written as ``TensorQuantOverrides``).
Dynamic recipes: ``quantize_dynamic`` (Gemm rewritten as MatMul + Add first, which ORT's
dynamic quantizer handles). The result is checked to really hold int8 weights, and the graph
ORT builds from it is inspected for the integer kernels it runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import ExportError
from ..quant.mapping import map_layers
from ..quant.calibrate import CalibrationResult
from .detect_quant import float_tail
from .onnx_scope import layer_scope, layers_only
from .recipe_ranges import quant_overrides, tensor_ranges
from .ort_calibrate import (calibration_notes, equal_batch_size, mask_nodes, supports_cache,
                            write_calibration_cache)
from .ort_ranges import recipe_overrides
from .ort_quant import CalibrationReader, calibration_method, sample_count

if TYPE_CHECKING:
    from ..job import ExportJob
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")

_INT_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QGemm", "QLinearAdd",
                "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLinear", "QLinearGlobalAveragePool")
_DYNAMIC_OPS = {"Linear": ["MatMul"], "LSTM": ["LSTM"], "GRU": []}  # ORT has no int8 GRU kernel


def quantize_onnx(float_path: Path, out_path: Path, job: "ExportJob", opts: Any) -> dict[str, Any]:
    """Write the INT8 realisation of ``job.recipe`` for the float ONNX at ``float_path``; notes."""
    import onnx

    recipe = job.recipe
    assert recipe is not None

    with tempfile.TemporaryDirectory() as work:
        prepared = _prepare(float_path, Path(work) / "prepared.onnx")
        proto = onnx.load(str(prepared))
        if recipe.scheme == "dynamic":
            notes = _dynamic(proto, prepared, out_path, recipe)
        else:
            feeds = calibration_feeds(job.calibration, proto, job.signature.input_names)
            # a detector's decode tail stays float (export/detect_quant.py): det24lib, #24
            tail = float_tail(proto) if job.metadata.get("detection") else []
            reuse = getattr(opts, "calibration", "reuse") == "reuse"
            # the simulated model's own scales and zero points, and its ranges for the rest
            # (calibrated once); calibration="onnxruntime": ORT's own calibration of every tensor
            exact, matched = (recipe_overrides(proto, job.reference, job.calibration, feeds,
                                               signed=recipe.backend != "x86")
                              if reuse else ({}, {"quantizers": 0, "matched": 0}))
            notes = _static(proto, prepared, out_path, recipe, feeds, opts.quant_format, tail,
                            exact, reuse)
            notes["simulated_quantizers_written"] = matched
    quantized = onnx.load(str(out_path))
    notes["int8_check"] = check_int8(quantized, recipe.scheme)
    notes["ort_kernels"] = ort_kernels(out_path)
    return notes


def _prepare(float_path: Path, out: Path) -> Path:
    """Shape inference (ORT's quant_pre_process without its optimizer, so node names stay)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # ORT's symbolic shape inference, when it cannot finish, saves
        # sym_shape_infer_temp.onnx (+ external data) into the working directory: the temp one
        with _working_directory(out.parent):
            quant_pre_process(str(Path(float_path).resolve()), str(out.resolve()),
                              skip_optimization=True)
        return out
    except Exception as exc:  # noqa: BLE001 - shape inference fails on some exotic graphs
        log.info("quant_pre_process failed (%s); quantizing the graph as exported",
                 str(exc)[:200])
        return float_path


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _layer_nodes(proto: Any, recipe: "QuantRecipe") -> tuple[dict[str, Any], list[str]]:
    order = [[name, list(shape)] for name, shape in recipe.layer_order]
    mapping = map_layers(proto, order)
    missing = [name for name, _ in order if name not in mapping]
    return mapping, missing


def _excluded_nodes(mapping: dict[str, Any], recipe: "QuantRecipe") -> list[str]:
    skipped = list(recipe.skipped_layers)
    unmapped = [s for s in skipped if s not in mapping]
    if unmapped:
        raise ExportError(f"the recipe keeps {', '.join(unmapped)} in float but the ONNX graph "
                          f"has no node that can be matched to them, so the artifact cannot "
                          f"honour skip=. Export with exporter='torchscript' (its node names "
                          f"carry the module paths) or drop these layers from skip=")
    return [mapping[s].name for s in skipped]


def calibration_feeds(calibration: Any, proto: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The calibration samples as ORT feeds them, ``{graph input: array}``: float inputs as
    float32, integer ids and masks in their own dtype (a model with several inputs gives them
    in call order, named by the signature). ExportError when there are none."""
    from ..data.inputs import batch_size, tensors

    if calibration is None or batch_size(calibration) == 0:
        raise ExportError("the static INT8 recipe carries no calibration samples, so ONNX "
                          "Runtime cannot calibrate; re-run QuantizePTQ/QuantizeQAT with data, "
                          "or save the model with DeployableModel.save(..., keep_samples=True) "
                          "to re-export it from the .ecm file")
    values = tensors(calibration)
    if len(values) == 1:
        names = [proto.graph.input[0].name]
    graph_inputs = [i.name for i in proto.graph.input]
    feeds = {n: (t.float() if t.is_floating_point() else t).cpu().numpy()
             for n, t in zip(names, values) if n in graph_inputs}
    missing = [n for n in graph_inputs if n not in feeds]
    if missing:
        raise ExportError(f"the ONNX graph reads inputs {missing} that the calibration samples "
                          f"do not hold (they hold {names}); give DataBundle(calib=...) batches "
                          f"with every input the model takes")
    return feeds


def _static(proto: Any, src: Path, out: Path, recipe: "QuantRecipe",
            samples: dict[str, np.ndarray], quant_format: str = "qdq",
            keep_float: list[str] | None = None,
            exact: dict[str, list[dict[str, Any]]] | None = None,
            reuse: bool = True) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    mapping, missing = _layer_nodes(proto, recipe)
    exclude = _excluded_nodes(mapping, recipe)
    known, learned = _recipe_ranges(proto, mapping, recipe)
    overrides = {**(exact or {}), **learned}  # the simulated model's scales; the recipe's win
    method = calibration_method(recipe.method)
    # u8 activations with s8 weights is ORT's fast x86 path (VNNI); s8/s8 for ARM
    act = QuantType.QUInt8 if recipe.backend == "x86" else QuantType.QInt8
    reduce = recipe.reduce_range
    fmt = QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ
    with tempfile.TemporaryDirectory() as work, _quiet():
        reader, cache, found, sources = _calibration(src, samples, recipe.method, Path(work),
                                                     known if reuse else {})
        masked = [n for n in mask_nodes(proto, found) if n not in exclude]
        tail = [n for n in keep_float or () if n not in exclude and n not in masked]
        exclude = exclude + masked + tail
        # byom23: a model fx cannot trace is simulated layer by layer; ORT quantizes as much
        ops, unlayered, extra = layer_scope(proto) if layers_only(recipe) else (None, [], {})
        exclude = exclude + [n for n in unlayered + _batchnorms(proto) if n not in exclude]
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        quantize_static(str(src), str(out), reader,
                        quant_format=fmt, per_channel=recipe.per_channel,
                        reduce_range=reduce, activation_type=act, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=method,
                        op_types_to_quantize=ops, extra_options=extra or None, **cache)
    notes: dict[str, Any] = {
        "quantizer": f"onnxruntime.quantization.quantize_static ({fmt.name})",
        "calibration": f"{recipe.method} on {sample_count(samples)} samples",
        "activation_type": "uint8" if recipe.backend == "x86" else "int8",
        "weight_type": f"int8 {'per-channel' if recipe.per_channel else 'per-tensor'}"
                       f"{' (reduce_range: 7-bit values, no VNNI)' if reduce else ''}",
        "float_nodes": exclude, "learned_ranges_written": len(learned),
        **({"quantized_op_types": ops} if ops else {}),
        **sources, **calibration_notes(found),
        **({"float_mask_nodes": masked} if masked else {}),
        **({"float_detection_tail": len(tail)} if tail else {})}
    if missing:
        notes["layers_not_matched"] = missing
        if learned:
            log.warning("ONNX INT8: %d layers could not be matched to graph nodes; their input "
                        "ranges were calibrated by ONNX Runtime instead of the QAT ranges",
                        len(missing))
    return notes


def _recipe_ranges(proto: Any, mapping: dict[str, Any], recipe: "QuantRecipe"
                   ) -> tuple[dict[str, list[float]], dict[str, list[dict[str, Any]]]]:
    """The recipe's ranges on the graph's tensors (calibrated once, in the simulated model),
    and the learned ones as ORT overrides. A Relu ORT quantizes takes its input's range to its
    output's (adjust_tensor_ranges); layers_only's op types leave Relu out."""
    known = tensor_ranges(proto, mapping, recipe, relu_inputs=not layers_only(recipe))
    learned = quant_overrides(known) if recipe.ranges_kind == "learned" else {}
    return known, learned


def _batchnorms(proto: Any) -> list[str]:
    """BatchNorms left unfolded (RepVGG's identity branch): the simulation runs them in float
    with float weights; ORT would round their scale to int8 (and run them in float anyway)."""
    return [n.name for n in proto.graph.node if n.op_type == "BatchNormalization" and n.name]


def _calibration(src: Path, samples: dict[str, np.ndarray], method: str, work: Path,
                 known: dict[str, list[float]]
                 ) -> tuple[Any, dict[str, Any], CalibrationResult | None, dict[str, int]]:
    """The reader and calibration-cache argument for ``quantize_static``, what our robust
    calibration left out and where its ranges came from (``known``: the recipe's, reused; see
    :mod:`.ort_calibrate`). ONNX Runtime without a calibration cache calibrates everything
    itself, on batches of equal size (its histogram collector needs them)."""
    if supports_cache():
        cache, found, sources = write_calibration_cache(src, samples, None, method, work,
                                                        known=known)
        return CalibrationReader(samples), {"calibration_cache_path": str(cache)}, found, sources
    batch = equal_batch_size(sample_count(samples))
    return CalibrationReader(samples, batch_size=batch), {}, None, {}


def _dynamic(proto: Any, src: Path, out: Path, recipe: "QuantRecipe") -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto, rewritten = gemm_to_matmul(proto)
    onnx.save(proto, str(src))
    mapping, _ = _layer_nodes(proto, recipe)
    exclude = _excluded_nodes(mapping, recipe)
    ops = sorted({op for kind in recipe.layers for op in _DYNAMIC_OPS.get(kind, [])})
    float_kinds = [k for k in recipe.layers if not _DYNAMIC_OPS.get(k)]
    with _quiet():
        quantize_dynamic(str(src), str(out), op_types_to_quantize=ops, per_channel=False,
                         reduce_range=recipe.reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    notes: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_dynamic",
                             "op_types": ops,
                             "reduce_range": recipe.reduce_range,
                             "gemm_rewritten": rewritten, "float_nodes": exclude}
    present = {n.op_type for n in proto.graph.node}
    kept = [k for k in float_kinds if k.upper() in present]
    if kept:
        notes["kept_float"] = (f"{', '.join(kept)} stay float in ONNX: ONNX Runtime has no "
                               f"dynamic int8 kernel for them")
        log.warning("ONNX dynamic INT8: %s", notes["kept_float"])
    return notes


def gemm_to_matmul(proto: Any) -> tuple[Any, int]:
    """Rewrite Gemm(x, W, b) with a constant W as MatMul(x, W') + b (ORT's dynamic quantizer
    handles MatMul, not Gemm). Returns the model and how many nodes were rewritten."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    new_nodes, count = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (node.op_type == "Gemm" and node.input[1] in inits and not attrs.get("transA", 0)
                 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)
        if not plain:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        w_name = node.input[1] + "_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        base = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
        mm_out = node.output[0] + ("_mm" if len(node.input) > 2 else "")
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                          name=f"{base}/MatMul"))
        if len(node.input) > 2 and node.input[2]:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                              name=f"{base}/Add"))
        count += 1
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes)
        used = {i for n in proto.graph.node for i in n.input}
        keep = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return proto, count


def check_int8(proto: Any, scheme: str) -> dict[str, Any]:
    """Measure what the file holds: int8 vs float weight bytes and quantization nodes.

    Raises ExportError when no weight is int8 — never a float file labelled int8.
    """
    from onnx import TensorProto

    int_types = (TensorProto.INT8, TensorProto.UINT8)
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    weight_inputs = {n.input[1] for n in proto.graph.node
                     if n.op_type in ("Conv", "Gemm", "MatMul", "DequantizeLinear", "LSTM",
                                      "DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger")
                     and len(n.input) > 1}
    weight_inputs |= {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    # QOperator nodes take (x, x_scale, x_zero_point, w, ...): the weight is the fourth input
    weight_inputs |= {n.input[3] for n in proto.graph.node
                      if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") and len(n.input) > 3}
    for t in proto.graph.initializer:
        kind = "int8" if t.data_type in int_types else "float"
        size = len(t.raw_data) if t.raw_data else int(np.prod(t.dims or [1])) * 4
        sizes[kind] += size
        if t.name in weight_inputs and len(t.dims) >= 2:
            counts[f"{kind}_weights"] += 1
    ops = Counter(n.op_type for n in proto.graph.node)
    result = {"int8_weight_tensors": counts["int8_weights"],
              "float_weight_tensors": counts["float_weights"],
              "int8_initializer_bytes": sizes["int8"], "float_initializer_bytes": sizes["float"],
              "quantize_nodes": ops["QuantizeLinear"], "dequantize_nodes": ops["DequantizeLinear"],
              "integer_ops": {k: v for k, v in ops.items() if k in _INT_KERNELS}}
    if counts["int8_weights"] == 0:
        raise ExportError(f"ONNX Runtime's quantizer produced no int8 weights for this "
                          f"{scheme} recipe (ops: {dict(ops)}); refusing to write a float file "
                          f"labelled int8. The model's layers may not be ones ORT quantizes")
    return result


def ort_kernels(path: Path) -> dict[str, int]:
    """Integer kernels in the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        optimized = Path(work) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized)
        so.intra_op_num_threads = 1
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return {k: v for k, v in sorted(ops.items()) if k in _INT_KERNELS or k.startswith("QLinear")}


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer prints progress and warns through the root logger; route it to ours."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        root.setLevel(level)
        text = buf.getvalue().strip()
        if text:
            log.debug("onnxruntime quantizer: %s", text[:2000])
