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

from ...data.inputs import call_model, tensors
from ...errors import ConfigError, PassError
from ...signature import flatten_outputs

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class ForwardFacts:
    """Facts from one forward pass: the named output shapes and the layers producing them."""

    outputs: dict[str, tuple[int, ...]]
    heads: list[nn.Module]  # the first layers met walking back from each output (kept whole)


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output tied to its weights (what the graph is traced from)."""
    return [t for _, t in flatten_outputs(out) if t.grad_fn is not None]


def record_producers(model: nn.Module, producers: dict[Any, nn.Module]) -> list[Any]:
    """Hooks filling ``producers`` (output grad_fn -> layer) for every leaf layer with weights
    (a container's output is the same tensor as its last layer's); remove them after use."""

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            producers[output.grad_fn] = module

    return [m.register_forward_hook(record) for m in model.modules()
            if not any(True for _ in m.children()) and any(True for _ in m.parameters(False))]


def trace_forward(model: nn.Module, x: Any, stage: str) -> ForwardFacts:
    """Run ``model`` once with autograd on; PassError unless an output is tied to its weights."""
    producers: dict[Any, nn.Module] = {}
    hooks = record_producers(model, producers)
    try:
        with torch.enable_grad():
            out = call_model(model, x)
    except Exception as exc:
        shapes = [tuple(t.shape) for t in tensors(x)]
        raise PassError(f"{stage}: the model fails on the example input "
                        f"{shapes[0] if len(shapes) == 1 else shapes}: {type(exc).__name__}: "
                        f"{str(exc)[:300]}", stage) from exc
    finally:
        for h in hooks:
            h.remove()
    named = flatten_outputs(out)
    if not named:
        raise PassError(f"{stage}: the model returns a {type(out).__name__} holding no tensor; "
                        f"structured pruning traces models whose outputs are tensors (or tuples, "
                        f"dicts, ModelOutputs of tensors)", stage)
    tied = output_tensors(out)
    if not tied:
        raise PassError(f"{stage}: the model's outputs are not connected to its weights in the "
                        f"autograd graph (forward() detaches, uses no_grad, or leaves torch), "
                        f"so the dependency graph cannot be traced. Remove the detach/no_grad "
                        f"from forward(), or use UnstructuredPrune, which needs no tracing", stage)
    return ForwardFacts({name: tuple(t.shape) for name, t in named},
                        first_layers(tied, producers))


def first_layers(outputs: list[torch.Tensor], producers: dict[Any, nn.Module]) -> list[nn.Module]:
    """Walk the autograd graph back from each output; the first layer met on each path produces
    (part of) that output, so its output channels must stay (classifier, box and mask heads)."""
    found: dict[int, nn.Module] = {}
    seen: set[int] = set()
    stack = [t.grad_fn for t in outputs]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in producers:
            found.setdefault(id(producers[fn]), producers[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(found.values())


def same_outputs(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> bool:
    """Whether pruning kept every output and its shape after the first dimension (the batch, or
    the number of detections, which may differ)."""
    return list(before) == list(after) and all(before[k][1:] == after[k][1:] for k in before)


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


_KNOWN_WEIGHTS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.LayerNorm,
                  nn.modules.batchnorm._NormBase, nn.GroupNorm)


def unknown_weight_layers(model: nn.Module) -> str:
    """``; its layers with weights Torch-Pruning cannot cut: Conv1D ×8`` (transformers' GPT-2
    projections are ``Conv1D``, not ``nn.Linear``), or "" when there are none."""
    kinds: dict[str, int] = {}
    for m in model.modules():
        weight = getattr(m, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and \
                not isinstance(m, _KNOWN_WEIGHTS):
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    shown = ", ".join(f"{k} ×{n}" for k, n in kinds.items())
    return f"; its layers with weights Torch-Pruning cannot cut: {shown}" if kinds else ""
