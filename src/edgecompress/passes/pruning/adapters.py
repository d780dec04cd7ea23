"""Model-specific knowledge the dependency graph cannot infer from one traced forward pass.

* ``nn.MultiheadAttention``: the embedding must stay divisible by the head count, so Torch-Pruning
  is told each layer's ``num_heads`` (it then removes the same dimension from every head).
* torchvision ``VisionTransformer`` keeps its width in ``hidden_dim`` (used by a reshape in
  ``forward``); it is updated after pruning so the model keeps running and reloads.
* Window attention (torchvision Swin v1/v2, MaxViT): Swin computes the head size from the input
  width inside a functional kernel that calls ``F.linear`` on its weights, and Torch-Pruning's
  index mapping stalls (minutes to hours) on the window partition reshapes of both. There only
  the *inner* widths are pruned — MLP hidden layers, MBConv expansions and squeeze-excitation
  bottlenecks — which hold most of the weights; the residual width and the heads are kept.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .analysis import PRUNABLE

# attention modules whose head size is recomputed from the input inside forward()
_WINDOW_ATTENTION = {"ShiftedWindowAttention", "ShiftedWindowAttentionV2",
                     "RelativePositionalMultiHeadAttention"}


def _class_names(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


def _inner_roots(module: nn.Module) -> list[nn.Module]:
    """Layers of ``module`` whose output width is private to the block (safe to prune alone)."""
    kind = type(module).__name__
    if isinstance(module, nn.Sequential):
        linears = [c for c in module.children() if isinstance(c, nn.Linear)]
        if len(linears) >= 2:  # an MLP: the hidden width sits between its first two Linears
            return [linears[0]]
    if kind == "MBConv" and hasattr(module, "layers") and hasattr(module.layers, "conv_a"):
        return [module.layers.conv_a[0]]
    if kind == "SqueezeExcitation" and hasattr(module, "fc1"):
        return [module.fc1]
    return []


def inner_only_layers(model: nn.Module) -> list[nn.Module] | None:
    """For window-attention models, the layers allowed to lose channels (else None)."""
    if not (_class_names(model) & _WINDOW_ATTENTION):
        return None
    return [root for module in model.modules() for root in _inner_roots(module)]


def pruner_options(model: nn.Module) -> dict[str, Any]:
    """Extra Torch-Pruning arguments for ``model`` (num_heads, layers to keep whole)."""
    options: dict[str, Any] = {}
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    if heads:
        options["num_heads"] = heads
    roots = inner_only_layers(model)
    if roots is not None:
        keep = set(map(id, roots))
        options["ignored_layers"] = [m for m in model.modules()
                                     if isinstance(m, PRUNABLE) and id(m) not in keep]
    return options


def after_prune(model: nn.Module) -> None:
    """Bring plain attributes in line with the pruned weights."""
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "conv_proj"):
        model.hidden_dim = model.conv_proj.out_channels
