"""ExecuTorch exporter: torch.export → edge dialect → XNNPACK delegate → ``.pte``.

ExecuTorch is PyTorch's on-device runtime (the successor to TorchScript-mobile). The graph is
captured with ``torch.export`` at batch 1 and lowered with executorch's XNNPACK partitioner, so
convolutions, linears, pooling and activations run in XNNPACK's kernels.

INT8 recipes go through PT2E with executorch's ``XNNPACKQuantizer`` (symmetric int8, per-channel
weights when the recipe is per-channel), calibrated on the recipe's samples; layers the recipe
keeps in float are left unannotated. XNNPACK then runs the quantized convolutions and linears
as qs8 kernels. Learned QAT ranges cannot be handed to PT2E's observers, so QAT recipes are
refused here (use ONNX or OpenVINO, which write them). The lowered program is inspected: an
INT8 export with no int8 layer inside the delegate is refused.

Metadata (and the sha256 of the ``.pte``) is stored in the sidecar ``<file>.pte.json``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._extras import require
from ..errors import ExportError
from ..metadata import write_sidecar
from ..job import ExportJob
from .base import Exporter, ExportOptions

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")

_COMPUTE = ("convolution", "linear", "addmm", "mm", "bmm")
_DEQUANT = ("dequantize_per_channel", "dequantize_per_tensor")


@dataclass
class ExecuTorchOptions(ExportOptions):
    """ExecuTorch takes the common options only (the program is fixed at batch 1)."""


def capture(model: nn.Module, example: torch.Tensor) -> Any:
    """``torch.export`` the model at the example's shape (a clear error when it cannot)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds of errors
        raise ExportError(f"torch.export could not capture {type(model).__name__}: "
                          f"{str(exc)[:500]}. ExecuTorch needs an exportable model (no "
                          f"data-dependent control flow); export to ONNX instead") from exc


def quantize_pt2e(model: nn.Module, example: torch.Tensor, recipe: "QuantRecipe",
                  calibration: torch.Tensor | None) -> nn.Module:
    """The recipe as a PT2E int8 model for XNNPACK, calibrated on the job's samples."""
    require("executorch", "executorch", "Exporting to ExecuTorch")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if getattr(recipe, "ranges_kind", None) == "learned":
        raise ExportError("ExecuTorch's PT2E quantizer recalibrates and would discard the "
                          "ranges this QAT recipe learned; export to ONNX or OpenVINO, which "
                          "write the learned ranges")
    if calibration is None or calibration.shape[0] == 0:
        raise ExportError("the static INT8 recipe carries no calibration samples, so PT2E "
                          "cannot calibrate; re-run QuantizePTQ with data")
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=recipe.per_channel))
    for name in recipe.skipped_layers:
        quantizer.set_module_name(name, None)
    prepared = prepare_pt2e(capture(model, example).module(), quantizer)
    samples = calibration.float()
    with torch.no_grad():
        for sample in samples.split(1):  # the graph was captured at batch 1
            prepared(sample)
    return convert_pt2e(prepared)


def lower_to_pte(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """Lower ``model`` with the XNNPACK partitioner and write the ``.pte``; delegation counts."""
    require("executorch", "executorch", "Exporting to ExecuTorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(capture(model, example), partitioner=[XnnpackPartitioner()])
        program = edge.to_executorch()
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"executorch could not lower the model to XNNPACK: {str(exc)[:600]}. "
                          f"Export to ONNX instead") from exc
    path.write_bytes(program.buffer)
    return delegation(edge.exported_program().graph_module)


def delegation(graph: Any) -> dict[str, Any]:
    """What runs inside XNNPACK and what stays on ExecuTorch's portable CPU kernels."""
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    int8 = subgraphs = 0
    for node in graph.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            inner = getattr(graph, node.name).original_module.graph_module
            delegated.update(_op_name(n) for n in inner.graph.nodes if n.op == "call_function")
            int8 += sum(_int8_layer(n) for n in inner.graph.nodes)
        elif node.op == "call_function" and "executorch_call_delegate" not in str(node.target) \
                and _op_name(node) != "getitem":
            portable[_op_name(node)] += 1
    return {"xnnpack_subgraphs": subgraphs, "delegated_ops": dict(sorted(delegated.items())),
            "portable_ops": dict(sorted(portable.items())), "int8_delegated_layers": int8}


def _op_name(node: Any) -> str:
    """``aten.convolution.default`` → ``convolution`` (the operator, without namespace/overload)."""
    parts = getattr(node.target, "__name__", str(node.target)).split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _int8_layer(node: Any) -> bool:
    """A convolution/linear whose weight comes from a dequantize node (XNNPACK's qs8 kernels)."""
    if node.op != "call_function" or _op_name(node) not in _COMPUTE or len(node.args) < 2:
        return False
    weight = node.args[1]
    while getattr(weight, "op", None) == "call_function" and _op_name(weight) in ("permute_copy", "t_copy"):
        weight = weight.args[0]
    return getattr(weight, "op", None) == "call_function" and _op_name(weight) in _DEQUANT


class ExecuTorchExporter(Exporter):
    """Writes ``.pte`` files lowered to XNNPACK; options in :class:`ExecuTorchOptions`."""

    Options = ExecuTorchOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        require("executorch", "executorch", "Exporting to ExecuTorch")
        from importlib.metadata import version
        model = copy.deepcopy(job.source).cpu().eval()
        example = job.example[:1].cpu()
        notes: dict[str, Any] = {"converter": "torch.export + executorch XNNPACK partitioner",
                                 "executorch_version": version("executorch"),
                                 "batch_size": 1}
        if precision.startswith("int8"):
            recipe, calibration = job.recipe, job.calibration
            assert recipe is not None
            model = quantize_pt2e(model, example, recipe, calibration)
            notes["quantizer"] = ("PT2E XNNPACKQuantizer (symmetric int8, "
                                  f"{'per-channel' if recipe.per_channel else 'per-tensor'})")
            assert calibration is not None
            notes["calibration"] = f"PT2E observers on {calibration.shape[0]} samples"
        with torch.no_grad():
            notes["output_shape"] = list(model(example).shape)
        notes.update(lower_to_pte(model, example, tmp))
        if precision.startswith("int8") and notes["int8_delegated_layers"] == 0:
            raise ExportError(f"XNNPACK took no int8 convolution or linear (delegated ops: "
                              f"{notes['delegated_ops']}); refusing to write a float program "
                              f"labelled int8. Export to ONNX or OpenVINO instead")
        return notes

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, metadata, [path])
