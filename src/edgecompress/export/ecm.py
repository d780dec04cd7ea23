"""The ``torch`` format: a DeployableModel saved as ``.ecm`` (weights + structure, no code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ecm_file
from ..job import ExportJob
from ..metadata import write_sidecar
from ..options import option
from .base import Exporter, ExportOptions

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe


@dataclass
class EcmOptions(ExportOptions):
    builder: str | None = option(None, "'module:function' returning the uncompressed model, "
                                       "recorded so the file reloads as the original class.")
    portable: bool = option(True, "Also store a torch.export program (reloads without builder).")
    keep_samples: bool = option(False, "Also store the INT8 recipe's calibration samples (the "
                                       "user's data; needed to re-export static INT8 to ONNX or "
                                       "TensorRT from the file alone).")


class EcmExporter(Exporter):
    """Writes ``.ecm`` files (see :meth:`DeployableModel.save`); runs them with TorchRunner."""

    Options = EcmOptions

    def float_precision(self, opts: Any) -> str:
        return "fp32"

    def decide_precision(self, recipe: "QuantRecipe | None", opts: Any) -> tuple[str, str | None]:
        """A static INT8 recipe's .ecm holds the simulated model (float weights, float kernels):
        its precision says so, so no table or report lists it beside the real int8 files. (A
        dynamic recipe's model holds torch's dynamic int8 modules: real int8 weights.)"""
        precision, fallback = super().decide_precision(recipe, opts)
        if precision == "int8-static":
            precision += "-simulated"
        return precision, fallback

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        # the .ecm keeps the model as the pipeline left it (job.reference), its float model
        # and the recipe, whatever this export's precision
        fields = {**job.saved, "builder": opts.builder or job.saved.get("builder")}
        ecm_file.write(tmp, job.reference, job.float_model, job.recipe, fields,
                       job.example if opts.portable else None,
                       keep_samples=opts.keep_samples)
        if not precision.endswith("-simulated"):
            return {}
        return {"int8": "simulated: float weights with the recipe's INT8 ranges (fake "
                        "quantization, float kernels); export to onnx, tflite or torchscript for "
                        "int8 weights and kernels"}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, json.loads(json.dumps(metadata, default=str)), [path])
