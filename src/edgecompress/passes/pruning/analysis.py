"""What structured pruning needs to know about a model before touching it.

Which layers produce the model's outputs (the classifier head, kept whole so the output shape
stays), which names ``ignore=`` refers to, and whether autograd can trace the model at all —
Torch-Pruning builds its dependency graph from the autograd graph of one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, PassError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class ForwardFacts:
    """Facts from one forward pass: output shape and the layers in the order they ran."""

    output_shape: tuple[int, ...]
    order: list[nn.Module]


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def trace_forward(model: nn.Module, x: torch.Tensor, stage: str) -> ForwardFacts:
    """Run ``model`` once with autograd on; PassError unless it gives one tensor tied to its weights."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.enable_grad():
            out = model(x)
    except Exception as exc:
        raise PassError(f"{stage}: the model fails on the example input "
                        f"{tuple(x.shape)}: {type(exc).__name__}: {str(exc)[:300]}", stage) from exc
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise PassError(f"{stage}: the model returns a {type(out).__name__}; structured pruning "
                        f"traces models that return one tensor (wrap the model so forward() "
                        f"returns the logits)", stage)
    if out.grad_fn is None:
        raise PassError(f"{stage}: the model's output is not connected to its weights in the "
                        f"autograd graph (forward() detaches, uses no_grad, or leaves torch), "
                        f"so the dependency graph cannot be traced. Remove the detach/no_grad "
                        f"from forward(), or use UnstructuredPrune, which needs no tracing", stage)
    return ForwardFacts(tuple(out.shape), order)


def output_layers(facts: ForwardFacts) -> list[nn.Module]:
    """The classifier head: the last layer that ran whose width equals the output's channels."""
    if len(facts.output_shape) < 2:
        return []
    width = facts.output_shape[1]
    for module in reversed(facts.order):
        if _out_width(module) == width:
            return [module]
    return []


def resolve_ignored(model: nn.Module, names: Iterable[str], stage: str) -> list[nn.Module]:
    """Modules named in ``ignore=`` (exact names; a container keeps everything inside it)."""
    modules = dict(model.named_modules())
    found, missing = [], []
    for name in names:
        if name in modules:
            found.append(modules[name])
        else:
            missing.append(name)
    if missing:
        layers = [n for n, m in modules.items() if isinstance(m, PRUNABLE)]
        raise ConfigError(f"{stage}: ignore= names no layer called {', '.join(map(repr, missing))}. "
                          f"Prunable layers of this model include: {', '.join(layers[:12])}"
                          + (" …" if len(layers) > 12 else ""))
    return found


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv/Linear layer, by name."""
    return {name: _out_width(m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def width_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int]]:
    return {name: [before[name], after[name]] for name in before
            if name in after and after[name] != before[name]}


def first_param_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def module_name(model: nn.Module, module: Any) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise KeyError(f"{type(module).__name__} is not part of {type(model).__name__}")
