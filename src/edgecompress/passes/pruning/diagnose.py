"""Which layers a failed structured-pruning attempt is about, so the error can name them.

Two places fail on architectures Torch-Pruning cannot map: its importance or pruning functions
on one coupled group (an index outside the layer: the group's channel mapping is wrong), and the
pruned model's forward (a reshape that assumed the old width). Both are turned into
:class:`Unprunable`, which carries the names to put in ``ignore=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...data.inputs import call_model
from .analysis import first_layers, record_producers


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
    producers: list[str] = field(default_factory=list)  # layers whose outputs fed it


def failing_block(model: nn.Module, x: Any) -> ForwardFailure | None:
    """Run ``model``; None when it runs, else where it failed."""
    stack: list[tuple[nn.Module, Any]] = []

    def enter(module: nn.Module, inputs: Any) -> None:
        stack.append((module, inputs[0] if inputs else None))

    def leave(module: nn.Module, _inputs: Any, _output: Any) -> None:
        stack.pop()

    producers: dict[Any, nn.Module] = {}
    hooks = [h for m in model.modules()
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    hooks += record_producers(model, producers)
    try:
        with torch.enable_grad():  # the failing layer's input leads back to its producers
            call_model(model, x)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is what we locate
        names = _names(model)
        blocks = [m for m, _ in stack if any(True for _ in m.children())]
        failure = ForwardFailure(exc, (names.get(id(blocks[-1])) or None) if blocks else None)
        if stack and not any(True for _ in stack[-1][0].children()):
            failure.layer = stack[-1][0]
            given = stack[-1][1]
            if isinstance(given, torch.Tensor) and given.grad_fn is not None:
                failure.producers = [names[id(m)] for m in first_layers([given], producers)
                                     if id(m) in names]
        return failure
    finally:
        for h in hooks:
            h.remove()


def culprits(failure: ForwardFailure) -> list[str]:
    """The layers to keep whole so the forward runs again: those whose outputs fed the failing
    layer (their width is the coupling the graph missed), else the failing block."""
    if failure.producers:
        return failure.producers
    return [failure.block] if failure.block else []
