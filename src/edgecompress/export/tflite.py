"""TFLite (LiteRT) exporter: torch → ``.tflite`` with litert-torch; fp16 and INT8 with
ai-edge-quantizer on the float flatbuffer.

Why this split: litert-torch converts the torch model (NCHW at the model's inputs and outputs —
it inserts the NHWC transposes inside the graph) to a float flatbuffer in seconds; Google's
ai-edge-quantizer then rewrites that flatbuffer with the recipe — static INT8 (int8 weights
*and* activations, calibrated on the recipe's samples, so LiteRT/XNNPACK runs int8 kernels),
dynamic-range INT8 (int8 weights, activations quantized on the fly) or fp16 weights. The
alternative for static INT8, PT2E + litert-torch, converts several times slower and always
gives int8 input/output tensors; ai-edge-quantizer can keep float input/output (``int8_io``).
Every written file is inspected (weight and kernel dtypes of each conv/linear op) and refused
when it does not hold what its label says.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._extras import require
from ..errors import ConfigError, ExportError
from ..metadata import write_sidecar
from ..options import option
from ..job import ExportJob
from ..data.inputs import tensors
from ..signature import Signature
from .base import Exporter, ExportOptions
from .flat import graph_model
from .tflite_quant import AiEdgeQuantizer, dist_version, inspect_tflite, quiet_tools

if TYPE_CHECKING:
    pass

log = logging.getLogger("edgecompress")

@dataclass
class TfliteOptions(ExportOptions):
    fp16: bool = option(False, "Store weights as float16 (LiteRT computes in float32; half "
                               "the size). Not combinable with an INT8 recipe.")
    int8_io: bool = option(False, "INT8 static recipes only: int8 input and output tensors "
                                  "(a full-integer model for integer-only accelerators). The "
                                  "LiteRT runner still takes and gives float unless raw=True.")
    calib_threads: int | None = option(None, "Threads for ai-edge-quantizer's calibration "
                                             "(None: all cores).", low=1)
    recipe_ranges: bool = option(True, "INT8 static recipes only: give each TFLite tensor that "
                                       "holds a recipe-covered activation the recipe's range "
                                       "(calibrated or QAT-learned). False re-calibrates every "
                                       "range as the min/max over the calibration samples.")
    compact_names: bool = option(True, "Give internal tensors short names (litert-torch "
                                       "names each after its module path: about 15 kB of a "
                                       "pruned INT8 ResNet-20's 105 kB); input/output tensors "
                                       "and signatures are kept. False keeps the long names "
                                       "for debugging.")


def convert_float(model: torch.nn.Module, example: Any, path: Path,
                  signature: Signature | None = None) -> dict[str, Any]:
    """Convert ``model`` to a float32 ``.tflite`` at ``path`` with litert-torch; ``example`` is
    a tensor, a tuple or a dict of tensors (the file takes them positionally, in call order,
    and gives the outputs flattened by ``flatten_outputs``)."""
    litert_torch = require("litert_torch", "tflite", "Exporting to TFLite")
    module, args = graph_model(model.eval(), example, signature or Signature.of(model, example))
    try:
        with quiet_tools(), torch.no_grad():
            edge = litert_torch.convert(module, args)
            edge.export(str(path))
    except Exception as exc:  # noqa: BLE001 - torch.export and the MLIR converter raise many types
        raise ExportError(f"litert-torch could not convert {type(model).__name__} to TFLite: "
                          f"{str(exc)[:600]}. The model must be exportable with "
                          f"torch.export.export(model, (x,)); ONNX (dm.export('onnx', ...)) "
                          f"may still work") from exc
    return {"converter": f"litert-torch {litert_torch.__version__}"}


def compact_tensor_names(path: Path) -> int:
    """Rename every tensor but the subgraphs' inputs and outputs to ``t<index>`` (in place);
    returns how many. The kernels, buffers and signatures are untouched, so outputs are
    identical (the export's parity check runs the renamed file)."""
    fu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite", "Rewriting .tflite files")
    model = fu.read_model_from_bytearray(bytearray(path.read_bytes()))
    renamed = 0
    for subgraph in model.subgraphs or []:
        io = set(subgraph.inputs or []) | set(subgraph.outputs or [])
        for index, tensor in enumerate(subgraph.tensors or []):
            if index not in io:
                tensor.name = f"t{index}".encode()
                renamed += 1
    path.write_bytes(bytes(fu.convert_object_to_bytearray(model)))
    return renamed


class TfliteExporter(Exporter):
    """Writes ``.tflite`` files; options in :class:`TfliteOptions`."""

    Options = TfliteOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        self._check_options(opts, precision)
        model = job.source.eval().cpu()
        example = job.example
        if precision == "fp32":
            notes = convert_float(model, example, tmp, job.signature)
        else:
            with tempfile.TemporaryDirectory() as work:
                float_path = Path(work) / "float.tflite"
                notes = convert_float(model, example, float_path, job.signature)
                aeq = AiEdgeQuantizer(float_path)
                if precision == "fp16":
                    aeq.fp16()
                else:
                    assert job.recipe is not None
                    aeq.recipe(job.recipe, opts.int8_io)
                calib = job.calibration
                # byom23: the recipe's ranges are matched on one input tensor; a model with
                # several inputs is calibrated by ai-edge-quantizer on all of them instead
                if (opts.recipe_ranges and precision == "int8-static"
                        and isinstance(calib, torch.Tensor) and calib.shape[0]):
                    assert job.recipe is not None
                    aeq.import_ranges(model, calib[:1], job.recipe)
                notes.update(aeq.run(tmp, calib, opts.calib_threads))
                if precision == "int8-static" and job.several_inputs:
                    notes["activation_ranges"] = ("min/max over all calibration samples (the "
                                                  "recipe's ranges are matched on one input)")
        if opts.compact_names:
            notes["tensors_renamed"] = compact_tensor_names(tmp)
        notes.update(self._check_written(tmp, precision, example, job.layout))
        return notes

    def _check_options(self, opts: Any, precision: str) -> None:
        if opts.fp16 and precision.startswith("int8"):
            raise ConfigError("fp16=True cannot combine with the model's INT8 recipe; drop fp16 "
                              "(the INT8 file is smaller still) or export the float model")
        if opts.int8_io and precision != "int8-static":
            raise ConfigError(f"int8_io=True needs a static INT8 recipe (this export is "
                              f"{precision}); quantize with ec.passes.QuantizePTQ or "
                              f"QuantizeQAT first")

    def _check_written(self, path: Path, precision: str, example: Any,
                       layout: str | None) -> dict[str, Any]:
        """Refuse a file whose tensors do not match its label; record what it holds."""
        facts = inspect_tflite(path)
        weights, kernels = facts["weight_dtypes"], facts["kernel_input_dtypes"]
        wanted = {"int8-static": ("int8", "int8"), "int8-dynamic": ("int8", None),
                  "fp16": ("float16", None)}.get(precision)
        if wanted is not None:
            w_dtype, k_dtype = wanted
            if not weights.get(w_dtype) or (k_dtype and not kernels.get(k_dtype)):
                raise ExportError(f"the {precision} TFLite file holds weights {weights} and "
                                  f"kernel inputs {kernels}, not {w_dtype}: the quantizer did not "
                                  f"realise the recipe, so nothing was written. ONNX "
                                  f"(dm.export('onnx', ...)) realises it with ORT's quantizer")
        first = tensors(example)[0]
        if facts["input_shape"] != list(first.shape):
            raise ExportError(f"litert-torch changed the input shape from {list(first.shape)} "
                              f"to {facts['input_shape']}; the runner could not take the torch "
                              f"model's input. Please report this model")
        facts["io_layout"] = layout
        facts["layout_note"] = ("litert-torch keeps the torch layout at the model's input and "
                                "output; NHWC transposes are inside the graph")
        facts["interpreter"] = f"ai-edge-litert {dist_version('ai-edge-litert')}"
        facts.pop("signature_inputs", None)
        return facts

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, json.loads(json.dumps(metadata, default=str)), [path])
