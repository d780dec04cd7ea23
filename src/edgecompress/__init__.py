"""edgecompress: compress a trained model for an edge device, with measured results.

Typical use::

    import edgecompress as ec

    data = ec.data.digits(image_size=32)
    dm = ec.Pipeline([ec.passes.Fuse()]).run(model, data)
    print(dm.report)
    art = dm.export("onnx", "out/model.onnx")
    runner = ec.load("out/model.onnx", threads=2)
    print(runner.benchmark())

The package is a lazy facade (PEP 562): ``import edgecompress`` loads only the errors and the
version, and each name below imports its module on first use. That keeps the device side
(``ec.load``, ``ec.system_status``, ``edgecompress serve``) free of torch: a device install
without torch imports and runs artifacts; the compression side imports torch when it is touched.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (ArtifactError, ChainError, ConfigError, DataError, EdgeCompressError,
                     ExportError, InputError, MissingExtraError, ParityError, PassError)

from . import formats as _formats  # registers the built-in format rows (pure Python, no torch)

logging.getLogger("edgecompress").addHandler(logging.NullHandler())

# public name -> module that defines it (relative to this package); imported on first access
_LAZY: dict[str, str] = {
    "Artifact": ".artifact", "DataBundle": ".data", "DeployableModel": ".deployable",
    "InputSpec": ".signature", "StageOutput": ".context", "StaticRecipe": ".quant_recipe",
    "DynamicRecipe": ".quant_recipe", "FORMATS": ".formats", "FormatSpec": ".formats",
    "register_format": ".formats", "Form": ".forms", "Pass": ".passes", "PassContext": ".passes",
    "register_pass": ".passes", "Measure": ".pipeline", "Pipeline": ".pipeline",
    "QuantRecipe": ".quant_recipe", "Report": ".report", "LatencyStats": ".runtime",
    "Runner": ".runtime", "load": ".runtime", "system_status": ".runtime",
    "FineTune": ".training", "Recovery": ".training", "set_progress": "._progress",
    "Distill": ".passes.distill", "select": ".select", "from_onnx": ".convert",
    "from_keras": ".convert", "ConversionError": ".convert",
    "detection_map": ".mean_ap", "DetectionMAP": ".mean_ap", "DetectionHead": ".detection",
}
# subpackages reachable as attributes (``ec.data``, ``ec.passes``, ...), imported on first access
_SUBMODULES = ("data", "passes", "targets", "students", "runtime", "serve")

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these resolve through __getattr__
    from . import data, passes, runtime, serve, students, targets
    from ._progress import set_progress
    from .data import DataBundle
    from .artifact import Artifact
    from .context import StageOutput
    from .deployable import DeployableModel
    from .formats import FORMATS, FormatSpec, register_format
    from .forms import Form
    from .detection import DetectionHead
    from .mean_ap import DetectionMAP, detection_map
    from .passes import Pass, PassContext, register_pass
    from .passes.distill import Distill
    from .pipeline import Measure, Pipeline
    from .quant_recipe import DynamicRecipe, QuantRecipe, StaticRecipe
    from .report import Report
    from .runtime import LatencyStats, Runner, load, system_status
    from .signature import InputSpec
    from .training import FineTune, Recovery


def __getattr__(name: str) -> Any:
    # importlib, not ``from . import x``: the latter looks the name up on this module first,
    # which calls this function again and recurses
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'edgecompress' has no attribute '{name}'")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["Artifact", "ArtifactError", "ChainError", "ConfigError", "ConversionError",
           "DataBundle", "DataError", "DeployableModel", "DetectionHead", "DetectionMAP",
           "DynamicRecipe", "EdgeCompressError", "ExportError", "FORMATS", "FineTune", "Form", "FormatSpec",
           "InputError", "InputSpec", "LatencyStats", "Measure", "MissingExtraError",
           "ParityError", "Pass", "PassContext", "PassError", "Pipeline", "QuantRecipe",
           "Recovery", "Report", "Runner", "StageOutput", "StaticRecipe", "__version__", "data",
           "detection_map", "from_keras", "from_onnx", "load", "passes", "register_format",
           "register_pass", "select", "set_progress", "system_status"]
