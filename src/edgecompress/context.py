"""The context a pass runs in: data, seed, device, target and the pipeline's state.

A leaf type: recoveries (:mod:`edgecompress.training`) and passes both take it, so it lives
below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

    from .data.bundle import DataBundle
    from .quant_recipe import QuantRecipe
    from .targets import Target


def pick_device(device: "torch.device | str | None" = None) -> "torch.device":
    """``device`` if given, else CUDA when available, else CPU."""
    import torch  # here, not at the top: the passes import this module without needing torch

    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class StageOutput:
    """What a pass gives back: the model, and what it decided for the stages and exports after it.

    ``recipe`` and ``float_model`` are set by quantization passes (exporters realise the recipe
    natively from the float model); ``structure`` holds structural changes by pass name (each
    value is a list, appended to the pipeline's record); ``notes`` go in the stage's report.
    """

    model: Any
    notes: Mapping[str, Any] = field(default_factory=dict)
    recipe: "QuantRecipe | None" = None
    float_model: Any = None
    structure: Mapping[str, list[Any]] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass can see besides the model: data, seed, device, target and pipeline state.

    ``model_before`` is a frozen copy of the model that entered the current pass (the teacher of
    a distillation recovery); ``quant_recipe`` and ``float_model`` are what earlier passes
    decided (read them; a pass returns its own in its :class:`StageOutput`). ``note`` records a
    fact about the current stage: recoveries called by the pass write there too.
    """

    data: "DataBundle"
    seed: int = 0
    device: "torch.device | str | None" = None
    target: "Target | None" = None
    model_before: Any = None
    quant_recipe: "QuantRecipe | None" = None
    float_model: Any = None
    notes: dict[str, Any] = field(default_factory=dict)  # the current stage's notes
    stage_index: int = 0

    def note(self, key: str, value: Any) -> None:
        """Record a fact about the current stage (shown in the report's notes)."""
        self.notes[key] = value

    def resolved_device(self) -> "torch.device":
        """The device passes train on (``device``, else CUDA when available)."""
        return pick_device(self.device)
