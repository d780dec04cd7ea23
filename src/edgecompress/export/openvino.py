"""OpenVINO exporter: torch → ONNX → OpenVINO IR (``model.xml`` + ``model.bin``) in a folder.

The artifact is a folder, so the graph and its weights are written (and replaced) together::

    model_openvino/
        model.xml          # graph; the edgecompress metadata is also in its rt_info
        model.bin          # weights: fp32, fp16 (fp16=True) or int8 (INT8 recipes)
        edgecompress.json  # metadata + parity + sha256 of model.xml and model.bin

INT8 recipes are realised in one of two ways (option ``quantizer``):

- ``"onnx"`` (default): the QDQ ONNX graph the ONNX exporter writes for the recipe (ORT's
  ``quantize_static`` with the recipe's method, samples, skipped layers and learned QAT ranges)
  is read by OpenVINO, whose low-precision transformations fold each QuantizeLinear /
  DequantizeLinear pair into int8 convolutions and matmuls. Same scales as the ONNX artifact.
- ``"nncf"``: NNCF's post-training quantization calibrates the float IR on the recipe's samples
  (Intel's own quantizer; OpenVINO's reference INT8 route). Learned QAT ranges cannot be handed
  to it, so QAT recipes are refused on this route.

Either way the compiled model is inspected: an INT8 artifact whose compiled graph runs no
int8/u8 convolution or matmul is refused (never a float file labelled int8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .._extras import require
from ..data.inputs import batch_size, tensors
from ..errors import ExportError
from ..metadata import write_sidecar
from ..options import option
from ..runtime.openvino_runner import RT_INFO_KEY, compute_precisions, int8_layer_count
from ..job import ExportJob, artifact_metadata
from .base import Exporter, ExportOptions

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")

XML_FILE = "model.xml"
BIN_FILE = "model.bin"


@dataclass
class OpenVinoOptions(ExportOptions):
    fp16: bool = option(False, "Store float weights as fp16 in model.bin (half the size; the CPU "
                               "plugin decompresses them, or computes in fp16 where the CPU has "
                               "fp16 arithmetic).")
    quantizer: str = option("onnx", "How an INT8 recipe becomes int8 IR: 'onnx' converts the QDQ "
                                    "graph written with the recipe's calibration (same scales as "
                                    "the ONNX artifact); 'nncf' lets NNCF calibrate the float IR "
                                    "on the recipe's samples (Intel's own quantizer).",
                            choices=("onnx", "nncf"))
    dynamic_batch: bool = option(True, "Keep the batch dimension dynamic (False: batch 1 only).")
    opset: int = option(17, "ONNX opset of the intermediate graph.", low=13, high=21)


def convert_onnx_to_ir(onnx_path: Path, out_dir: Path, fp16: bool = False,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Convert an ONNX file (float or QDQ) to IR ``model.xml`` + ``model.bin`` in ``out_dir``."""
    ov = require("openvino", "openvino", "Exporting to OpenVINO")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - the frontend raises its own error types
        raise ExportError(f"OpenVINO could not convert the ONNX graph: {str(exc)[:600]}. "
                          f"Export to ONNX instead, or report the unsupported operator") from exc
    return save_ir(model, out_dir, fp16, metadata)


def save_ir(model: Any, out_dir: Path, fp16: bool, metadata: dict[str, Any] | None) -> Path:
    """Save an ``ov.Model`` as ``out_dir/model.xml`` (+ ``.bin``), metadata in its rt_info."""
    import openvino as ov

    if metadata:
        model.set_rt_info(json.dumps(metadata, default=str), RT_INFO_KEY)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / XML_FILE
    ov.save_model(model, str(xml), compress_to_fp16=fp16)
    return xml


def nncf_quantize_ir(float_xml: Path, out_dir: Path, calibration: Any,
                     skipped_nodes: list[str], metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Quantize the float IR with NNCF on the job's calibration samples; write int8 IR."""
    ov = require("openvino", "openvino", "Exporting to OpenVINO")
    nncf = require("nncf", "openvino", "Quantizing with NNCF")
    if calibration is None or batch_size(calibration) == 0:
        raise ExportError("the static INT8 recipe carries no calibration samples, so NNCF "
                          "cannot calibrate; re-run QuantizePTQ with data")
    count = batch_size(calibration)
    model = ov.Core().read_model(str(float_xml))
    ignored = (nncf.IgnoredScope(patterns=[re.escape(n) + ".*" for n in skipped_nodes],
                                 validate=False) if skipped_nodes else None)
    # one sample per item: NNCF's statistics are per-sample; the input is dynamic in batch.
    # byom23: a model with several inputs gets every one, by the IR's input names in call order
    values = [(t.float() if t.is_floating_point() else t).numpy() for t in tensors(calibration)]
    names = [i.get_any_name() for i in model.inputs]
    items = ([values[0][i:i + 1] for i in range(count)] if len(values) == 1 else
             [{n: v[i:i + 1] for n, v in zip(names, values)} for i in range(count)])
    dataset = nncf.Dataset(items)
    kwargs: dict[str, Any] = {"subset_size": count,
                              "preset": nncf.QuantizationPreset.PERFORMANCE}
    if ignored is not None:
        kwargs["ignored_scope"] = ignored
    with _quiet_nncf(nncf):
        quantized = nncf.quantize(model, dataset, **kwargs)
    save_ir(quantized, out_dir, False, metadata)
    return {"quantizer": f"nncf.quantize {getattr(nncf, '__version__', '?')} (preset performance)",
            "calibration": f"NNCF min-max/mean statistics on {count} samples",
            "float_nodes": skipped_nodes}


@contextlib.contextmanager
def _quiet_nncf(nncf: Any) -> Iterator[None]:
    """NNCF logs at INFO and draws rich progress bars on stdout: keep them out of the user's."""
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level or logging.INFO)


def compiled_precisions(xml: Path, threads: int | None = 1) -> dict[str, int]:
    """``{"<layer type>:<runtime precision>": count}`` of the CPU plugin's compiled graph."""
    ov = require("openvino", "openvino", "Inspecting an OpenVINO model")
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"} if threads else {}
    return compute_precisions(core.compile_model(core.read_model(str(xml)), "CPU", config))


def check_int8_ir(xml: Path) -> dict[str, Any]:
    """Refuse an INT8 IR whose compiled graph runs no int8 compute layer; return the counts."""
    precisions = compiled_precisions(xml)
    count = int8_layer_count(precisions)
    if count == 0:
        raise ExportError(f"OpenVINO compiled the INT8 model without a single int8 convolution "
                          f"or matmul (compute layers: {precisions}); refusing to write a float "
                          f"model labelled int8. Export to ONNX instead")
    return {"int8_compute_layers": count, "compiled_layers": precisions}


class OpenVinoExporter(Exporter):
    """Writes OpenVINO IR folders; options in :class:`OpenVinoOptions`."""

    Options = OpenVinoOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        ov = require("openvino", "openvino", "Exporting to OpenVINO")
        recipe = job.recipe
        metadata = artifact_metadata(job.metadata, self.spec.name, precision)
        if recipe is not None and opts.quantizer == "nncf" and getattr(recipe, "ranges_kind", None) == "learned":
            raise ExportError("quantizer='nncf' recalibrates and would discard the ranges this "
                              "QAT recipe learned; use quantizer='onnx' (the default), which "
                              "writes the learned ranges")
        fp16 = bool(opts.fp16) and recipe is None
        with tempfile.TemporaryDirectory(prefix="ec_ov_") as scratch:
            work = Path(scratch)
            notes = self._onnx(job, work, opts)
            if recipe is not None and opts.quantizer == "nncf":
                convert_onnx_to_ir(work / "model.onnx", work / "float_ir")
                notes.update(nncf_quantize_ir(work / "float_ir" / XML_FILE, tmp, job.calibration,
                                              notes.pop("float_nodes", []), metadata))
            else:
                convert_onnx_to_ir(work / "model.onnx", tmp, fp16, metadata)
        notes.update({"converter": f"openvino.convert_model {ov.__version__} (from ONNX)",
                      "openvino_version": ov.__version__, "openvino_xml": XML_FILE,
                      "openvino_bin": BIN_FILE, "weights_dtype": _weights_dtype(fp16, recipe)})
        if recipe is not None:
            notes.update(check_int8_ir(tmp / XML_FILE))
            notes["int8_route"] = opts.quantizer
        return notes

    def check(self, runner: Any, job: ExportJob, precision: str, opts: Any) -> Any:
        """NNCF recalibrates with its own ranges, so its file is compared with the float model
        (the simulated model holds the recipe's ranges, which NNCF does not use)."""
        if job.recipe is not None and opts.quantizer == "nncf":
            job = dataclasses.replace(job, reference=job.source, reference_name=(
                "float torch model (NNCF calibrated its own ranges)"))
        return super().check(runner, job, precision, opts)

    def _onnx(self, job: ExportJob, work: Path, opts: Any) -> dict[str, Any]:
        """The intermediate ONNX graph: float, or QDQ for the 'onnx' INT8 route."""
        from .onnx import export_float_onnx

        recipe, model = job.recipe, job.source
        from ..data.inputs import to_device

        example = to_device(job.example, next((p.device for p in model.parameters()), "cpu"))
        target = work / ("float.onnx" if recipe is not None and opts.quantizer == "onnx" else "model.onnx")
        _, notes = export_float_onnx(model, example, target, opts.opset, opts.dynamic_batch,
                                     signature=job.signature)
        if recipe is None:
            return notes
        if opts.quantizer == "nncf":
            notes["float_nodes"] = _skipped_onnx_nodes(target, recipe)
            return notes
        from .onnx_quant import quantize_onnx

        q = quantize_onnx(target, work / "model.onnx", job, _QdqOptions())
        q.pop("ort_kernels", None)  # ORT's fused kernels say nothing about OpenVINO's
        return {**notes, **q}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, metadata, [path / XML_FILE, path / BIN_FILE])


class _QdqOptions:
    """The one ONNX option quantize_onnx reads: OpenVINO folds QDQ pairs, not QOperator."""

    quant_format = "qdq"


def _skipped_onnx_nodes(onnx_path: Path, recipe: "QuantRecipe") -> list[str]:
    """ONNX node names of the layers the recipe keeps in float (NNCF's ignored scope)."""
    import onnx

    from .onnx_quant import _excluded_nodes, _layer_nodes

    mapping, _ = _layer_nodes(onnx.load(str(onnx_path)), recipe)
    return _excluded_nodes(mapping, recipe)


def _weights_dtype(fp16: bool, recipe: Any) -> str:
    if recipe is not None:
        return "int8"
    return "float16" if fp16 else "float32"
