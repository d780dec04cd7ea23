"""ExportJob: everything an exporter sees, built once by the caller (``DeployableModel.export``).

Exporters receive a frozen job and give back a file; they never read or change the
DeployableModel or its data bundle (NNCF's algorithms work the same way: each backend gets
exactly what it needs). Which model to convert, what to compare against, which calibration
samples to use: those choices are made here, once, for every format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ._version import __version__
from .quant_recipe import QuantRecipe
from .signature import Signature


@dataclass(frozen=True)
class ExportJob:
    """What one export needs.

    Attributes:
        source: the torch model to convert (the float model when an INT8 recipe is realised
            natively by the format's quantizer).
        reference: the model the artifact's outputs are compared with; ``reference_name``
            says which (simulated INT8, float, float fallback).
        recipe: the INT8 recipe to realise (None: a float export, also for a float fallback).
        signature: the named inputs and outputs with dtypes and shapes.
        example: one real input (batch 1) to trace with: a tensor, or a tuple / dict of tensors
            for a model that takes several (``signature.inputs`` names them, in call order).
        parity_inputs: real inputs for the parity check (same structure as ``example``).
        eval_data: labelled batches for the artifact's accuracy (None: not measured).
        calibration: inputs to calibrate a static recipe with (the recipe's own samples, else
            samples of the bundle; the structure of ``example``; None for float and dynamic
            exports).
        metadata: the model-level metadata every artifact carries (input, classes, recipe...).
        saved: what a ``.ecm`` file records besides the weights (history, report, info...).
        float_model: the float model a recipe was derived from (``.ecm`` files keep it).
        tokenizer: the data's tokenizer (formats that embed one, e.g. GGUF; None otherwise).
    """

    source: nn.Module
    reference: nn.Module
    reference_name: str
    recipe: QuantRecipe | None
    signature: Signature
    example: Any
    parity_inputs: Any
    eval_data: Iterable[Any] | None = None
    calibration: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    saved: Mapping[str, Any] = field(default_factory=dict)
    float_model: nn.Module | None = None
    tokenizer: Any = None

    def example_batch(self, n: int) -> Any:
        """``n`` copies of the example input (for tracers that specialise a batch of 1)."""
        from .data.inputs import batch_size, repeat

        return repeat(self.example, n) if n != batch_size(self.example) else self.example

    @property
    def example_args(self) -> tuple[Any, ...]:
        """The example as positional arguments in call order (what tracers take)."""
        from .data.inputs import tensors

        return tuple(tensors(self.example))

    @property
    def several_inputs(self) -> bool:
        """True when the model takes more than one tensor, or takes its input as a dict."""
        return not isinstance(self.example, torch.Tensor)

    @property
    def layout(self) -> str | None:
        return self.signature.inputs[0].layout


def artifact_metadata(model_meta: Mapping[str, Any], fmt: str, precision: str) -> dict[str, Any]:
    """``model_meta`` with the format and precision, in the order artifacts always had."""
    out = {"edgecompress_version": model_meta.get("edgecompress_version", __version__),
           "format": fmt, "precision": precision}
    out.update({k: v for k, v in model_meta.items() if k != "edgecompress_version"})
    return out


__all__ = ["ExportJob", "artifact_metadata"]
