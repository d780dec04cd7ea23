"""Which layers a failed structured-pruning attempt is about, so the error can name them.

Two places fail on architectures Torch-Pruning cannot map: its importance or pruning functions
on one coupled group (an index outside the layer: the group's channel mapping is wrong), and the
pruned model's forward (a reshape that assumed the old width). Both are turned into
:class:`Unprunable`, which carries the names to put in ``ignore=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .analysis import PRUNABLE


class Unprunable(Exception):
    """The channels of ``layers`` cannot be removed consistently; ``detail`` says why."""

    def __init__(self, layers: list[str], detail: str) -> None:
        super().__init__(f"{', '.join(layers)}: {detail}")
        self.layers = layers
        self.detail = detail


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def group_layers(model: nn.Module, graph: Any, group: Any) -> list[str]:
    """Names of the layers whose output channels a Torch-Pruning group removes (root first)."""
    names, out = _names(model), []
    for dep, _ in group:
        if graph.is_out_channel_pruning_fn(dep.handler):
            name = names.get(id(dep.target.module))
            if name and name not in out:
                out.append(name)
    return out


@dataclass
class ForwardFailure:
    """Where the pruned model's forward failed."""

    error: BaseException
    block: str | None  # innermost running module with children: the forward code that failed
    layer: nn.Module | None = None  # innermost running layer
    got: int | None = None  # channels of that layer's input, when it is a Conv/Linear


def _in_width(x: Any, layer: nn.Module) -> int | None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    return int(x.shape[-1] if isinstance(layer, nn.Linear) else x.shape[1])


def failing_block(model: nn.Module, x: torch.Tensor) -> ForwardFailure | None:
    """Run ``model``; None when it runs, else where it failed."""
    stack: list[tuple[nn.Module, Any]] = []

    def enter(module: nn.Module, inputs: Any) -> None:
        stack.append((module, inputs[0] if inputs else None))

    def leave(module: nn.Module, _inputs: Any, _output: Any) -> None:
        stack.pop()

    hooks = [h for m in model.modules()
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            model(x)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is what we locate
        names = _names(model)
        blocks = [m for m, _ in stack if any(True for _ in m.children())]
        failure = ForwardFailure(exc, (names.get(id(blocks[-1])) or None) if blocks else None)
        if stack and isinstance(stack[-1][0], PRUNABLE):
            failure.layer, failure.got = stack[-1][0], _in_width(stack[-1][1], stack[-1][0])
        return failure
    finally:
        for h in hooks:
            h.remove()


def culprits(failure: ForwardFailure, changes: dict[str, list[int]]) -> list[str]:
    """The layers to keep whole so the forward runs again: those whose width went from what the
    failing layer expects to what it got (the coupling the graph missed), else the block."""
    layer = failure.layer
    if layer is not None and failure.got is not None:
        expected = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        producers = [name for name, (before, after) in changes.items()
                     if before == expected and after == failure.got]
        if producers:
            return producers
    return [failure.block] if failure.block else []
