"""One structured-pruning step on Torch-Pruning's dependency graph, plus what it lacks.

Torch-Pruning (``DependencyGraph`` + ``BasePruner``) finds every layer coupled to a channel —
residual additions, depthwise/grouped convolutions, concatenations, squeeze-excitation,
flatten→linear — and removes the channel everywhere at once. Added here:

* ``round_to`` that rounds the kept count to the *nearest* multiple and never empties a layer
  (Torch-Pruning rounds it *down*: a 64-channel layer asked to lose 30 % kept 40, not 48, and
  thin layers can reach zero);
* model-specific adapters (:mod:`.adapters`) for layers whose shape lives in plain attributes
  (torchvision's ViT ``hidden_dim``, attention head sizes) that the graph does not see.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..._extras import require
from ...data.inputs import call_model
from ...errors import PassError
from . import adapters
from .analysis import output_tensors
from .attention import find_attentions
from .diagnose import Unprunable, group_layers
from .importance import accumulate_gradients, make_importance
from .watchdog import GraphTimeout, time_limit

log = logging.getLogger("edgecompress")


@dataclass
class StepConfig:
    """How one pruning step ranks and removes channels."""

    importance: str = "l2"
    global_scope: bool = True
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    ignored: list[str] = field(default_factory=list)  # module names (models get deep-copied)
    grad_batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    time_limit: float | None = None  # seconds per graph build or pruning step


def channels_to_prune(n_pruned: int, current: int, round_to: int) -> int:
    """How many of ``current`` channels to remove when ``n_pruned`` were asked for, keeping a
    multiple of ``round_to`` (the nearest one; layers at or below ``round_to`` stay whole)."""
    if current <= round_to:
        return 0
    kept = (2 * (current - n_pruned) + round_to) // (2 * round_to) * round_to  # nearest, ties up
    kept = min(max(kept, round_to), current - current % round_to)
    return current - kept


def _pruner_class() -> type:
    tp = require("torch_pruning", "prune", "Structured pruning (Torch-Pruning)")

    class _Pruner(tp.pruner.BasePruner):
        """BasePruner whose round_to keeps the nearest multiple (ties keep more), at least
        ``round_to`` channels and at most the layer's own width rounded down.

        In a group of channel groups (attention heads, grouped convolutions) Torch-Pruning asks
        ``_round_to`` for the count of *one* group but passes the layer's total width, so the
        rounding is done per group here: each head keeps a multiple of
        ``round_to / gcd(round_to, heads)``, and the layer's width stays a multiple of round_to.
        Torch-Pruning checks ``_is_atten_group(group)`` just before rounding that group, which
        is where the group's channel-group count is read.
        """

        _groups_of_current = 1
        unmappable: list[tuple[Any, BaseException]]

        def estimate_importance(self, group: Any) -> Any:
            # an index outside a layer here means the group's channel mapping is wrong; the
            # group is left out (None: Torch-Pruning skips it) and reported by prune_step
            try:
                return super().estimate_importance(group)
            except (IndexError, RuntimeError, ValueError) as exc:
                self.__dict__.setdefault("unmappable", []).append((group, exc))
                return None

        def _is_atten_group(self, group: Any) -> Any:
            self._groups_of_current = self._get_channel_groups(group)
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            groups = self._groups_of_current
            if groups > 1:
                step = max(1, round_to // math.gcd(round_to, groups))
                return channels_to_prune(n_pruned, current_channels // groups, step)
            return channels_to_prune(n_pruned, current_channels, round_to)

    return _Pruner


def _call(model: nn.Module, example: Any) -> Any:
    # Torch-Pruning's default tries model(*example) first, which runs a batch-of-one input
    # unbatched on models that accept both
    return call_model(model, example)


def build_pruner(model: nn.Module, example: Any, ratio: float, cfg: StepConfig,
                 stage: str) -> Any:
    """A pruner over ``model``'s dependency graph (PassError when it cannot be traced)."""
    extra = adapters.pruner_options(model)
    modules = dict(model.named_modules())
    ignored = [modules[name] for name in cfg.ignored]
    pruner_class = _pruner_class()  # a missing extra is named, not called a graph failure
    what = f"{stage}: dependency graph of {type(model).__name__}"
    try:
        with time_limit(cfg.time_limit, what), adapters.graph_build_guards(model):
            return pruner_class(
                model, example, forward_fn=_call, output_transform=output_tensors,
                importance=make_importance(cfg.importance),
                global_pruning=cfg.global_scope, pruning_ratio=ratio,
                max_pruning_ratio=cfg.max_layer_ratio, round_to=cfg.round_to,
                ignored_layers=[*ignored, *extra.pop("ignored_layers", [])], **extra)
    except GraphTimeout as exc:
        raise PassError(_timeout_message(what, cfg, model), stage) from exc
    except Exception as exc:
        raise PassError(f"{stage}: Torch-Pruning cannot build the dependency graph of "
                        f"{type(model).__name__}: {type(exc).__name__}: {str(exc)[:300]}. "
                        f"It fails before any layer is chosen, so no layer can be named: "
                        f"keep the blocks it cannot trace whole with ignore=[...] (the "
                        f"model's top-level blocks: {_top_level(model)}) or use "
                        f"UnstructuredPrune, which needs no graph", stage) from exc


def _top_level(model: nn.Module) -> str:
    names = [name for name, _ in model.named_children()]
    return ", ".join(map(repr, names[:8])) + (" …" if len(names) > 8 else "")


def _timeout_message(what: str, cfg: StepConfig, model: nn.Module) -> str:
    return (f"{what} took longer than time_limit={cfg.time_limit:g} s and was stopped. Raise "
            f"time_limit (None: no limit), keep the blocks that are slow to map whole with "
            f"ignore=[...] (top-level blocks: {_top_level(model)}), or use UnstructuredPrune")


def _cut_groups(model: nn.Module, pruner: Any) -> int:
    """Prune every group the pruner chose; Unprunable (naming the layers) when Torch-Pruning
    fails on a group, before anything is cut when it failed while ranking."""
    cut = 0
    groups = pruner.step(interactive=True)
    while True:
        try:
            group = next(groups, None)
        except (IndexError, RuntimeError, ValueError) as exc:
            raise Unprunable([], f"Torch-Pruning failed: {type(exc).__name__}: {exc}") from exc
        _raise_unmappable(model, pruner)
        if group is None:
            return cut
        try:
            group.prune()
        except (IndexError, RuntimeError, ValueError) as exc:
            raise Unprunable(group_layers(model, pruner.DG, group),
                             f"Torch-Pruning cannot remove these channels together "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from exc
        cut += 1


def _raise_unmappable(model: nn.Module, pruner: Any) -> None:
    failed = getattr(pruner, "unmappable", [])
    if failed:
        layers = [name for group, _ in failed for name in group_layers(model, pruner.DG, group)[:1]]
        exc = failed[0][1]
        raise Unprunable(layers, f"Torch-Pruning maps their channels to indices outside the "
                         f"coupled layers ({type(exc).__name__}: {str(exc)[:200]}), so the "
                         f"coupling cannot be cut consistently")


def count_groups(pruner: Any) -> int:
    """How many channel groups the pruner may cut (0: nothing prunable)."""
    with adapters.graph_build_guards(pruner.model):
        return sum(1 for _ in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                       root_module_types=pruner.root_module_types))


def prune_step(model: nn.Module, example: torch.Tensor, ratio: float, cfg: StepConfig,
               stage: str, pruner: Any = None) -> int:
    """Remove ``ratio`` of the prunable channels of ``model`` in place; return groups cut.

    ``pruner``: one already built over ``model`` with this ratio (saves tracing it again).
    """
    attentions = find_attentions(model)
    pruner = pruner or build_pruner(model, example, ratio, cfg, stage)
    if cfg.importance == "taylor":
        accumulate_gradients(model, cfg.grad_batches)
    what = f"{stage}: pruning step on {type(model).__name__}"
    try:
        with time_limit(cfg.time_limit, what), torch.no_grad(), \
                adapters.graph_build_guards(model):
            cut = _cut_groups(model, pruner)
    except GraphTimeout as exc:
        raise PassError(_timeout_message(what, cfg, model), stage) from exc
    model.zero_grad(set_to_none=True)
    adapters.after_prune(model, attentions, pruner.num_heads)
    return cut
