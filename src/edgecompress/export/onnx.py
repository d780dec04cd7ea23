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
from ..errors import ExportError
from ..job import ExportJob
from ..onnx_utils import compact_names, load_onnx, write_metadata
from ..options import option
from .base import Exporter, ExportOptions

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


def export_float_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17,
                      dynamic_batch: bool = True, simplify: bool = True,
                      exporter: str = "torchscript", save: bool = True) -> tuple[Any, dict[str, Any]]:
    """Export ``model`` to float ONNX at ``path``; return the checked (simplified) graph and
    notes. ``save=False`` leaves the graph in memory only (the caller writes it once)."""
    import onnx

    model = model.eval()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.TransformerEncoder's eval-mode fused kernel has no ONNX export: use the plain ops
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            if exporter == "dynamo":
                dyn = ({"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None)
                torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_shapes=dyn, external_data=False)
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many kinds of errors
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise ExportError(f"torch could not export {type(model).__name__} to ONNX with the "
                          f"{exporter} exporter: {str(exc)[:600]}. Try exporter='{other}' or a "
                          f"different opset") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    notes: dict[str, Any] = {"opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch}
    proto = onnx.load(str(path))
    if simplify:
        proto, notes["simplified"] = _simplify(proto)
    onnx.checker.check_model(proto)
    if save:
        onnx.save(proto, str(path))
    return proto, notes


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


class OnnxExporter(Exporter):
    """Writes ``.onnx`` files; options in :class:`OnnxOptions`."""

    Options = OnnxOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        import onnx

        model = job.source
        example = job.example.to(next((p.device for p in model.parameters()), "cpu"))
        with tempfile.TemporaryDirectory() as work:
            float_path = Path(work) / "float.onnx"
            proto, notes = export_float_onnx(model, example, float_path, opts.opset,
                                             opts.dynamic_batch, opts.simplify, opts.exporter,
                                             save=precision.startswith("int8"))
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
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
