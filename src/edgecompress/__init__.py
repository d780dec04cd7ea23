"""edgecompress: compress a trained model for an edge device, with measured results.

Typical use::

    import edgecompress as ec

    data = ec.data.digits(image_size=32)
    dm = ec.Pipeline([ec.passes.Fuse()]).run(model, data)
    print(dm.report)
    art = dm.export("onnx", "out/model.onnx")
    runner = ec.load("out/model.onnx", threads=2)
    print(runner.benchmark())
"""

from __future__ import annotations

import importlib
import logging

from . import data, passes
from ._progress import set_progress
from ._version import __version__
from .data import DataBundle
from .deployable import DeployableModel, InputSpec
from .errors import (ArtifactError, ChainError, ConfigError, DataError, EdgeCompressError,
                     ExportError, InputError, MissingExtraError, ParityError, PassError)
from .export import Artifact
from .formats import FORMATS, FormatSpec, register_format  # also registers the built-in rows
from .forms import Form
from .passes import Pass, PassContext, StageOutput, register_pass
from .pipeline import Measure, Pipeline
from .quant_recipe import DynamicRecipe, QuantRecipe, StaticRecipe
from .report import Report
from .runtime import LatencyStats, Runner, load, system_status
from .training import FineTune, Recovery

logging.getLogger("edgecompress").addHandler(logging.NullHandler())


def __getattr__(name: str):  # lazy: these pull optional or heavier modules
    if name == "Distill":
        from .passes.distill import Distill
        return Distill
    if name in ("targets", "students"):
        # import_module, not `from . import x`: that form asks this __getattr__ for the
        # not-yet-imported submodule again and recursed until RecursionError
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'edgecompress' has no attribute '{name}'")


__all__ = ["Artifact", "ArtifactError", "ChainError", "ConfigError", "DataBundle", "DataError",
           "DeployableModel", "DynamicRecipe", "EdgeCompressError", "ExportError", "FORMATS",
           "FineTune", "Form", "FormatSpec", "InputError", "InputSpec", "LatencyStats", "Measure",
           "MissingExtraError", "ParityError", "Pass", "PassContext", "PassError", "Pipeline",
           "QuantRecipe", "Recovery", "Report", "Runner", "StageOutput", "StaticRecipe",
           "__version__", "data", "load", "passes", "register_format", "register_pass",
           "set_progress", "system_status"]
