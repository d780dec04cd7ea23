"""ONNX exporter: torch → ONNX (opset 13–21), simplified, checked, metadata embedded.

INT8 recipes are realised with ONNX Runtime's own quantizer on the float graph (QDQ for static,
integer weights for dynamic) — the path ORT fuses into int8 kernels.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path
from ..data.inputs import to_device
from ..errors import ExportError
from ..job import ExportJob
from ..onnx_utils import compact_names, load_onnx, write_metadata
from ..options import option
from ..signature import Signature
from .base import Exporter, ExportOptions
from .flat import WRAPPER_SCOPE, graph_model

log = logging.getLogger("edgecompress")


@dataclass
class OnnxOptions(ExportOptions):
    opset: int = option(17, "ONNX opset (13/14 for older ARM ONNX Runtime builds).",
                        low=13, high=21)
    dynamic_batch: bool = option(True, "Make the batch dimension dynamic.")
    simplify: bool = option(True, "Simplify the graph with onnxsim (falls back with a warning).")
    exporter: str = option("torchscript", "Which of torch's ONNX exporters: the TorchScript-based one "
                           "(supports opset 13–17 graphs ORT quantizes well) or dynamo.",
                           choices=("torchscript", "dynamo"))
    compact_names: bool = option(True, "Give internal tensors short names and drop onnxsim's "
                                 "bookkeeping metadata and the intermediate shape annotations "
                                 "(about 30 kB less on a quantized ResNet-20); graph "
                                 "input/output and node names are kept. False keeps torch's "
                                 "tensor names for debugging.")
    quant_format: str = option("qdq", "How static INT8 is written: QDQ (Quantize/DequantizeLinear "
                               "pairs around float ops; what TensorRT, QNN and other execution "
                               "providers need) or QOperator (QLinearConv and ORT's contrib "
                               "QLinear ops directly: the kernels ORT's CPU provider runs either "
                               "way, in a smaller file; CPU ONNX Runtime only).",
                               choices=("qdq", "qoperator"))
    calibration: str = option("reuse", "Where static INT8 activation ranges come from: reuse "
                              "the ranges the simulated model measured on the recipe's samples "
                              "(calibrated once; ONNX Runtime runs the graph only for tensors "
                              "the simulation has no quantizer for) or onnxruntime (ORT "
                              "calibrates every tensor again on the same samples with the same "
                              "method, on its own float values: try it when a model's parity "
                              "check fails by a few steps).",
                              choices=("reuse", "onnxruntime"))
    fp16: bool = option(False, "Store weights and compute in fp16 (inputs and outputs stay "
                               "float32) for GPU/NPU execution providers (CUDA, TensorRT, "
                               "DirectML, CoreML). Refused when this ONNX Runtime has only the CPU "
                               "provider, which runs fp16 graphs by casting back to fp32: "
                               "measured 1.25x slower than fp32 on ResNet-18 (x86, 1 thread).")
    fp16_on_cpu: bool = option(False, "Write the fp16 graph even though only the CPU provider "
                                      "is here (the file is for another machine; verification "
                                      "then runs the cast fp32 path).")


def export_float_onnx(model: nn.Module, example: Any, path: Path, opset: int = 17,
                      dynamic_batch: bool = True, simplify: bool = True,
                      exporter: str = "torchscript", save: bool = True,
                      signature: Signature | None = None) -> tuple[Any, dict[str, Any]]:
    """Export ``model`` to float ONNX at ``path``; return the checked (simplified) graph and
    notes. ``save=False`` leaves the graph in memory only (the caller writes it once).

    ``example`` is a tensor, a tuple or a dict of tensors; every graph input and output gets
    its name (and dtype) from ``signature`` (default: :meth:`Signature.of` the model), with a
    dynamic dimension 0 on all of them when ``dynamic_batch``."""
    import onnx

    sig = signature or Signature.of(model, example)
    module, args = graph_model(model.eval(), example, sig)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.TransformerEncoder's eval-mode fused kernel has no ONNX export: use the plain ops
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _torch_export(module, args, path, sig, opset, dynamic_batch, exporter)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many kinds of errors
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise ExportError(f"torch could not export {type(model).__name__} to ONNX with the "
                          f"{exporter} exporter: {str(exc)[:600]}. Try exporter='{other}' or a "
                          f"different opset") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    notes: dict[str, Any] = {"opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch}
    proto = onnx.load(str(path))
    _check_io(proto, sig, type(model).__name__)
    if module is not model:
        _unscope(proto)
    if simplify:
        proto, notes["simplified"] = _simplify(proto)
    onnx.checker.check_model(proto)
    if save:
        onnx.save(proto, str(path))
    return proto, notes


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, sig: Signature,
                  opset: int, dynamic_batch: bool, exporter: str) -> None:
    names_in, names_out = sig.input_names, sig.output_names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            dyn = tuple({0: batch} for _ in args) if dynamic_batch else None
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                              input_names=names_in, output_names=names_out,
                              dynamic_shapes=dyn, external_data=False)
        else:
            axes = {n: {0: "batch"} for n in (*names_in, *names_out)} if dynamic_batch else None
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=names_in, output_names=names_out,
                              dynamic_axes=axes, do_constant_folding=True)


def _check_io(proto: Any, sig: Signature, what: str) -> None:
    """The graph must take every input the model was called with (torch drops unused ones)."""
    got = [i.name for i in proto.graph.input]
    missing = [n for n in sig.input_names if n not in got]
    if missing:
        raise ExportError(f"the ONNX graph of {what} has no input {missing}: the model does not "
                          f"use it on the example, so torch left it out. Leave it out of the "
                          f"model's inputs (DataBundle transform=) or make the model use it")


def _unscope(proto: Any) -> None:
    """Drop the wrapper's ``/model`` scope from node names, so a wrapped model's nodes are named
    as they would be unwrapped (the INT8 recipe's layers are matched by these names)."""
    prefix = f"/{WRAPPER_SCOPE}/"
    for node in proto.graph.node:
        if node.name.startswith(prefix):
            node.name = "/" + node.name[len(prefix):]


def _simplify(proto: Any) -> tuple[Any, bool | str]:
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:
            return simplified, True
        log.warning("onnxsim could not validate the simplified graph; keeping the original")
        return proto, "failed validation"
    except Exception as exc:  # noqa: BLE001 - onnxsim raises arbitrary errors on odd graphs
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", str(exc)[:200])
        return proto, f"failed: {str(exc)[:120]}"


def check_fp16_useful(on_cpu_ok: bool) -> None:
    """Refuse an fp16 ONNX when only ONNX Runtime's CPU provider could run it (it is slower)."""
    import onnxruntime as ort

    gpu = [p for p in ort.get_available_providers() if p not in ("CPUExecutionProvider",
                                                                 "AzureExecutionProvider")]
    if not gpu and not on_cpu_ok:
        raise ExportError("fp16 ONNX is refused here: this ONNX Runtime has only the CPU "
                          "provider, which has no fp16 convolution kernels on this CPU and runs "
                          "the graph by casting back to fp32 (measured slower than the fp32 "
                          "file). Export fp32 for CPUs, openvino/tflite/ncnn with fp16=True for "
                          "half-size weights, or pass fp16_on_cpu=True when the file is for a "
                          "GPU/NPU provider on another machine")


def convert_to_fp16(path: Path) -> dict[str, Any]:
    """Rewrite the float ONNX at ``path`` with fp16 weights and ops (float32 inputs/outputs)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True,
                                     disable_shape_infer=False)
    _topological_sort(proto.graph)  # the converter appends its input casts at the end
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    kept = sum(1 for n in proto.graph.node if n.op_type == "Cast")
    return {"weights_dtype": "float16", "fp16_casts": kept,
            "fp16_converter": "onnxruntime.transformers.float16 (keep_io_types)"}


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ExportError("the fp16 graph has a cycle or an input nothing produces")
        for node in done:
            ready.update(node.output)
        ordered.extend(done)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


class OnnxExporter(Exporter):
    """Writes ``.onnx`` files; options in :class:`OnnxOptions`."""

    Options = OnnxOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        import onnx

        model = job.source
        example = to_device(job.example, next((p.device for p in model.parameters()), "cpu"))
        if precision == "fp16":
            check_fp16_useful(opts.fp16_on_cpu)
        with tempfile.TemporaryDirectory() as work:
            float_path = Path(work) / "float.onnx"
            proto, notes = export_float_onnx(model, example, float_path, opts.opset,
                                             opts.dynamic_batch, opts.simplify, opts.exporter,
                                             save=precision.startswith("int8") or precision == "fp16",
                                             signature=job.signature)
            if precision == "fp16":
                notes.update(convert_to_fp16(float_path))
                proto = load_onnx(float_path)
            if precision.startswith("int8"):
                from .onnx_quant import quantize_onnx

                assert job.recipe is not None
                notes.update(quantize_onnx(float_path, tmp, job, opts))
                proto = load_onnx(tmp)
        if opts.compact_names:
            notes["tensors_renamed"] = compact_names(proto)
        onnx.save(proto, str(tmp))
        return notes

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        import onnx

        proto = load_onnx(path)
        write_metadata(proto, metadata)
        with atomic_path(path, overwrite=True) as tmp:
            onnx.save(proto, str(tmp))
