"""StructuredPrune: remove whole channels, neurons and head dimensions, so the model shrinks.

Unlike ``torch.nn.utils.prune.ln_structured`` (which only zeroes a mask), the pruned layers are
rebuilt with fewer channels: parameters, MACs and latency drop for real. Torch-Pruning's
dependency graph removes each channel from every layer coupled to it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convert.detector import detector_head_modules
from ..data.inputs import call_model, head as first_samples, to_device
from ..errors import ConfigError, PassError
from ..forms import Form
from ..measure import count_macs, count_params
from ..options import option
from ..signature import flatten_outputs
from ..training import Recovery, seed_everything
from .base import Pass, PassContext, StageOutput
from .pruning.analysis import (
    first_param_device,
    layer_widths,
    module_name,
    resolve_ignored,
    same_outputs,
    trace_forward,
    unknown_weight_layers,
    width_changes,
)
from .pruning.diagnose import Unprunable, culprits, failing_block
from .pruning.engine import StepConfig, build_pruner, count_groups, prune_step
from .pruning.importance import IMPORTANCES, gradient_batches
from .pruning.refusal import refusal

log = logging.getLogger("edgecompress")

_SEARCH_ITERATIONS = 12  # bisection steps on the ratio when a MACs/params target is given


@dataclass
class StructuredPrune(Pass):
    """Remove the least important channels of every prunable layer group (physically).

    Give one of ``ratio`` (fraction of channels removed), ``target_macs`` or ``target_params``
    (fraction of the dense model's MACs/parameters to keep; the channel ratio is found by
    bisection). With ``steps > 1`` pruning is iterative and ``finetune`` runs after each step.

    The layers producing the model's outputs (a classifier, a detector's box and score heads, a
    segmenter's mask classifier, an encoder's last norm) are kept whole, so every output keeps
    its shape; outputs may be a tensor, a tuple/list, a dict or a Hugging Face ``ModelOutput``.
    Attention heads (Hugging Face and timm attentions, ``nn.MultiheadAttention``) keep their
    count and lose the same dimensions each. A coupling Torch-Pruning cannot map is refused
    with the layers named and an ``ignore=`` that was checked to work.
    """

    name = "structured_prune"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FLOAT

    ratio: float | None = option(None, "Fraction of channels to remove (0.3 when no target is "
                                 "given).", low=0, high=1, low_open=True, high_open=True)
    target_macs: float | None = option(None, "Keep this fraction of the dense model's MACs "
                                       "(instead of ratio).", low=0, high=1, low_open=True,
                                       high_open=True)
    target_params: float | None = option(None, "Keep this fraction of the dense model's "
                                         "parameters (instead of ratio).", low=0, high=1,
                                         low_open=True, high_open=True)
    importance: str = option("l2", "How channels are ranked: weight norms (l1, l2), first-order "
                             "Taylor on training batches, BatchNorm scale, or random (baseline).",
                             choices=IMPORTANCES)
    # local by default (as Torch-Pruning): at one parameter count it was ahead in every
    # comparison measured (CIFAR ResNet-20 at 20-45 %, Fashion-MNIST CNN at 44 %)
    scope: str = option("local", "Remove the same fraction from each layer (local) or rank "
                        "channels across all layers (global).", choices=("global", "local"))
    # 8 by default: ONNX Runtime ran its blocked (NCHWc) convolutions only on multiples of 8;
    # odd counts fell back to slower kernels (ResNet-18 at ratio 0.5, 1 thread: 3.00x faster
    # unrounded, 3.61x with 8; benchmarks/results/prune_speed*.md).
    round_to: int | None = option(8, "Keep channel counts at multiples of this (faster "
                                  "kernels); layers at or below it are left whole. 1 or None "
                                  "turns rounding off.", low=1)
    ignore: tuple[str, ...] = option((), "Names of layers (or containers) to keep whole; the "
                                     "layers producing the outputs are always kept.")
    keep_detector_head: bool = option(True, "Keep a recognised detector's whole head (its box "
                                      "and class branches: Ultralytics' Detect, SSD's head) "
                                      "unpruned; False prunes inside it too.")
    max_layer_ratio: float = option(0.9, "No layer loses more than this fraction of its channels.",
                                    low=0, high=1, low_open=True, high_open=True)
    steps: int = option(1, "Iterative pruning: reach the goal in this many steps, fine-tuning "
                        "after each.", low=1, high=100)
    grad_batches: int = option(4, "Training batches used for importance='taylor'.", low=1)
    finetune: Recovery | None = option(None, "Recovery after each pruning step "
                                       "(ec.FineTune(...) or a distillation recovery).",
                                       recipe=True)
    # Torch-Pruning's graph build ran past 6 minutes on some hybrids, silently; progress is
    # logged every 15 s whatever the limit
    time_limit: float | None = option(300.0, "Seconds one dependency-graph build or pruning "
                                      "step may take before the pass stops with an error "
                                      "(None: no limit).", low=0, low_open=True)

    def validate(self) -> None:
        given = [k for k in ("ratio", "target_macs", "target_params") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"StructuredPrune: give only one of ratio, target_macs, "
                              f"target_params (got {', '.join(given)})")
        if self.finetune is not None and not isinstance(self.finetune, Recovery):
            raise ConfigError(f"StructuredPrune: finetune must be a recovery such as "
                              f"ec.FineTune(epochs=2), got {type(self.finetune).__name__}")

    # -- the pass -------------------------------------------------------------------------------
    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        try:
            return self._prune(model, ctx)
        except Unprunable as exc:
            raise PassError(refusal(self, model, ctx, exc), self.name) from exc

    def _prune(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        stage = self.name
        # a tensor, or a tuple / dict of tensors (token ids and a mask): one sample of each
        example = to_device(first_samples(ctx.data.example_input, 1), first_param_device(model))
        facts = trace_forward(model.eval(), example, stage)
        resolve_ignored(model, self.ignore, stage)  # unknown names fail here, before any work
        head = [module_name(model, m) for m in facts.heads]
        keep = [*head, *self.ignore, *(detector_head_modules(model) if self.keep_detector_head
                                       else ())]
        cfg = StepConfig(importance=self.importance, global_scope=self.scope == "global",
                         round_to=self.round_to, max_layer_ratio=self.max_layer_ratio,
                         ignored=keep, time_limit=self.time_limit)
        ctx.note("kept_whole", keep)
        if self.importance == "taylor":
            cfg.grad_batches = gradient_batches(ctx.data, self.grad_batches)
        dense = {"params": count_params(model), "macs": count_macs(model, example)}
        widths = layer_widths(model)
        work = copy.deepcopy(model)  # the input stays whole whatever happens below
        kind, goal = self._goal()
        first_ratio = self._step_ratio(goal, 1) if kind == "ratio" else 0.5
        pruner = build_pruner(work, example, first_ratio, cfg, stage)
        if count_groups(pruner) == 0:
            raise PassError(f"{stage}: {type(model).__name__} has no prunable layers (Conv or "
                            f"Linear layers whose output channels can be removed, other than "
                            f"the classifier head and ignore={list(self.ignore)})"
                            f"{unknown_weight_layers(model)}. Use UnstructuredPrune (masks "
                            f"weights in any layer) or QuantizeDynamic instead", stage)
        for step in range(1, self.steps + 1):
            if step == 1 and kind == "ratio":  # reuse the graph traced for the check above
                seed_everything(ctx.seed)
                prune_step(work, example, first_ratio, cfg, stage, pruner=pruner)
            else:
                work = self._one_step(work, example, cfg, dense, step, ctx)
            self._check_output(work, example, facts.outputs, stage)
            if self.finetune is not None:
                desc = "finetune" if self.steps == 1 else f"finetune_step{step}"
                work = self.finetune.recover(work, ctx, desc=desc)
        change = self._record(work, example, dense, widths, ctx)
        return StageOutput(work.eval(), structure={"structured_prune": [change]})

    def _step_ratio(self, goal: float, step: int) -> float:
        """Channels to remove in ``step``, relative to what the previous step left."""
        done, now = (step - 1) / self.steps, step / self.steps
        return 1 - (1 - goal * now) / (1 - goal * done)

    def _goal(self) -> tuple[str, float]:
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        return "ratio", self.ratio if self.ratio is not None else 0.3

    def _one_step(self, model: nn.Module, example: torch.Tensor, cfg: StepConfig,
                  dense: dict[str, int | None], step: int, ctx: PassContext) -> nn.Module:
        kind, goal = self._goal()
        if kind == "ratio":
            return self._pruned_copy(model, example, self._step_ratio(goal, step), cfg, ctx)
        now = step / self.steps
        reference = dense[kind]
        if reference is None:
            raise PassError(f"{self.name}: target_{kind} needs the model's MACs, which torch's "
                            f"FLOP counter cannot measure for this model; use ratio=", self.name)
        wanted = reference * (1 - (1 - goal) * now)
        return self._search(model, example, cfg, kind, wanted, ctx)

    def _pruned_copy(self, model: nn.Module, example: torch.Tensor, ratio: float,
                     cfg: StepConfig, ctx: PassContext) -> nn.Module:
        seed_everything(ctx.seed)  # random importance: the same draw for the same ratio
        trial = copy.deepcopy(model)
        prune_step(trial, example, ratio, cfg, self.name)
        return trial

    def _measure(self, model: nn.Module, example: torch.Tensor, kind: str) -> int:
        return count_params(model) if kind == "params" else int(count_macs(model, example) or 0)

    def _search(self, model: nn.Module, example: torch.Tensor, cfg: StepConfig, kind: str,
                wanted: float, ctx: PassContext) -> nn.Module:
        """Bisect the channel ratio until ``kind`` is just at or below ``wanted``."""
        if self._measure(model, example, kind) <= wanted:
            return model
        low, high = 0.0, self.max_layer_ratio
        best: nn.Module | None = None
        best_value = None
        for _ in range(_SEARCH_ITERATIONS):
            mid = (low + high) / 2
            trial = self._pruned_copy(model, example, mid, cfg, ctx)
            value = self._measure(trial, example, kind)
            if value <= wanted:
                best, best_value, high = trial, value, mid
            else:
                low = mid
            if best_value is not None and best_value >= 0.99 * wanted:
                break
        if best is None:
            raise PassError(f"{self.name}: cannot reach target_{kind}: even removing "
                            f"{self.max_layer_ratio:.0%} of the channels of each layer keeps more "
                            f"than the target. Raise max_layer_ratio or lower the target; "
                            f"the classifier head and ignored layers are never pruned", self.name)
        ctx.note("search_ratio", round(high, 4))
        return best

    def _check_output(self, model: nn.Module, example: torch.Tensor,
                      shapes: dict[str, tuple[int, ...]], stage: str) -> None:
        failure = failing_block(model.eval(), example)
        if failure is not None:
            exc = failure.error
            raise Unprunable(culprits(failure), f"the pruned model no longer runs "
                             f"({type(exc).__name__}: {str(exc)[:200]}): its forward code "
                             f"assumes a width the dependency graph could not see") from exc
        with torch.no_grad():
            after = {name: tuple(t.shape) for name, t in flatten_outputs(call_model(model, example))}
        if not same_outputs(shapes, after):
            raise PassError(f"{stage}: pruning changed the outputs from {shapes} to {after}; "
                            f"add the layer producing them to ignore=[...]", stage)

    def _record(self, model: nn.Module, example: torch.Tensor, dense: dict[str, int | None],
                widths: dict[str, int], ctx: PassContext) -> dict[str, Any]:
        params, macs = count_params(model), count_macs(model, example)
        changes = width_changes(widths, layer_widths(model))
        ctx.note("params_ratio", round(params / dense["params"], 4) if dense["params"] else None)
        if macs is not None and dense["macs"]:
            ctx.note("macs_ratio", round(macs / dense["macs"], 4))
        ctx.note("layers_pruned", len(changes))
        change = {"layer_widths": changes, "params": params, "macs": macs}
        if not changes:
            log.warning("%s: no channel was removed (ratio too small for the layer widths or "
                        "round_to?)", self.name)
        log.info("%s: params %d -> %d, MACs %s -> %s, %d layers narrowed", self.name,
                 dense["params"], params, dense["macs"], macs, len(changes))
        return change
