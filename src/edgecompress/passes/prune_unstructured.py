"""UnstructuredPrune: zero the smallest weights (magnitude pruning), masks made permanent.

Pruning uses ``torch.nn.utils.prune`` (global or per-layer L1 magnitude). With
``schedule="gradual"`` the sparsity follows the cubic schedule of Zhu & Gupta (2017) over
``steps``, fine-tuning between steps with the masks still applied (pruned weights stay zero
while the others learn). At the end ``prune.remove`` bakes the zeros into plain ``weight``
tensors: no ``weight_orig`` / ``weight_mask`` remains. The shapes do not change — the gain is
in compressed size (zeros compress) and in runtimes with sparse kernels; the report measures
the zero fraction and the xz/zip sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import ConfigError, PassError
from ..forms import Form
from ..measure import compressed_sizes, serialized_state, sparsity
from ..options import option
from ..training import Recovery
from .base import Pass, PassContext, StageOutput

log = logging.getLogger("edgecompress")

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``steps`` steps: ``s_f + (s_i - s_f)(1 - t/n)^3`` (Zhu & Gupta)."""
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def prunable_weights(model: nn.Module, ignore: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Conv/Linear whose weight is pruned, minus ``ignore``d names."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED) and not any(
                name == i or name.startswith(i + ".") for i in ignore):
            out.append((name, module))
    return out


def measured_sparsity(layers: list[tuple[str, nn.Module]]) -> float:
    """Zero fraction over the pruned weights (reads the masked weight while masks are on)."""
    total = zeros = 0
    for _, module in layers:
        w = module.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def _refresh_masked(layers: list[tuple[str, nn.Module]]) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` (stale after a state-dict restore)."""
    with torch.no_grad():
        for _, module in layers:
            if hasattr(module, "weight_mask"):
                module.weight = module.weight_orig * module.weight_mask


@dataclass
class UnstructuredPrune(Pass):
    """Zero ``sparsity`` of the Conv/Linear weights by magnitude; masks removed at the end."""

    name = "unstructured_prune"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FLOAT

    sparsity: float = option(0.8, "Fraction of the weights set to zero.", low=0, high=1,
                             low_open=True, high_open=True)
    scope: str = option("global", "Rank weights across all layers (global) or prune each layer "
                        "to the same sparsity (layer).", choices=("global", "layer"))
    schedule: str = option("oneshot", "All at once, or gradually over steps (cubic schedule).",
                           choices=("oneshot", "gradual"))
    steps: int = option(4, "Pruning steps of the gradual schedule.", low=1, high=100)
    ignore: tuple[str, ...] = option((), "Names of layers (or containers) left dense.")
    finetune: Recovery | None = option(None, "Recovery with the masks applied: after each "
                                       "gradual step, or once after one-shot pruning.",
                                       recipe=True)

    def validate(self) -> None:
        if self.finetune is not None and not isinstance(self.finetune, Recovery):
            raise ConfigError(f"UnstructuredPrune: finetune must be a recovery such as "
                              f"ec.FineTune(epochs=1), got {type(self.finetune).__name__}")

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        layers = prunable_weights(model, self.ignore)
        if not layers:
            raise PassError(f"{self.name}: {type(model).__name__} has no Conv or Linear weights "
                            f"to prune (ignore={list(self.ignore)})", self.name)
        targets = (cubic_schedule(self.sparsity, self.steps) if self.schedule == "gradual"
                   else [self.sparsity])
        try:
            for step, target in enumerate(targets, start=1):
                self._prune_to(layers, target)
                ctx.note(f"sparsity_step{step}" if len(targets) > 1 else "sparsity_pruned",
                         round(measured_sparsity(layers), 4))
                if self.finetune is not None:
                    desc = "finetune" if len(targets) == 1 else f"finetune_step{step}"
                    model = self.finetune.recover(model, ctx, desc=desc)
        finally:
            for _, module in layers:  # bake the zeros in, even when fine-tuning failed
                if prune.is_pruned(module) and hasattr(module, "weight_mask"):
                    prune.remove(module, "weight")
        self._report(model, layers, ctx)
        return StageOutput(model.eval())

    def _prune_to(self, layers: list[tuple[str, nn.Module]], target: float) -> None:
        """Bring the pruned weights to ``target`` sparsity (masks stack on earlier masks)."""
        _refresh_masked(layers)
        current = measured_sparsity(layers)
        if target <= current:
            return
        # torch's pruning amount is a fraction of the weights still unpruned
        amount = (target - current) / (1 - current)
        if self.scope == "global":
            prune.global_unstructured([(m, "weight") for _, m in layers],
                                      pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for _, module in layers:
                prune.l1_unstructured(module, "weight", amount=amount)

    def _report(self, model: nn.Module, layers: list[tuple[str, nn.Module]],
                ctx: PassContext) -> None:
        left = [n for n, m in model.named_modules() for k in ("weight_orig", "weight_mask")
                if hasattr(m, k)]
        if left:
            raise PassError(f"{self.name}: pruning masks remain on {left[:3]} after removal",
                            self.name)
        measured = measured_sparsity(layers)
        ctx.note("sparsity_measured", round(measured, 4))
        ctx.note("sparsity_all_weights", round(sparsity(model), 4))
        ctx.note("layers_pruned", len(layers))
        ctx.note("compressed_bytes", compressed_sizes(serialized_state(model)))
        log.info("%s: %.2f%% of the pruned weights are zero (target %.0f%%)", self.name,
                 100 * measured, 100 * self.sparsity)
