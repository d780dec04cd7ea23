"""Structured FFN pruning of Llama / Qwen2 models: remove whole MLP channels, physically.

The generic ``StructuredPrune`` traces models that return one tensor; Hugging Face causal LMs
return a ``ModelOutput``, so until pruning learns them this removes the least important
intermediate channels of every SwiGLU MLP (rows of ``gate_proj``/``up_proj``, columns of
``down_proj``), the same number in every layer so that GGUF's single ``feed_forward_length``
still describes the model. Importance: ``‖gate_i‖·‖up_i‖·‖down_:,i‖`` (weight magnitude).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .models import architecture


def _shrink(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    w = linear.weight.detach().index_select(dim, keep)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    out.weight.data.copy_(w)
    if linear.bias is not None:
        b = linear.bias.detach() if dim == 1 else linear.bias.detach().index_select(0, keep)
        out.bias.data.copy_(b)
    return out


@torch.no_grad()
def prune_ffn(model: nn.Module, keep: float, multiple: int = 32) -> nn.Module:
    """A copy of ``model`` keeping ``keep`` of each MLP's channels (rounded to ``multiple``)."""
    if architecture(model) not in ("llama", "qwen2"):
        raise ConfigError("prune_ffn prunes SwiGLU MLPs of Llama / Qwen2 models")
    if not 0 < keep < 1:
        raise ConfigError(f"keep must be a fraction between 0 and 1, got {keep}")
    pruned = copy.deepcopy(model)
    width = pruned.config.intermediate_size
    n = max(multiple, int(round(width * keep / multiple)) * multiple)
    for layer in pruned.model.layers:
        mlp = layer.mlp
        score = (mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1)
                 * mlp.down_proj.weight.norm(dim=0))
        idx = torch.topk(score, n).indices.sort().values
        mlp.gate_proj = _shrink(mlp.gate_proj, idx, 0)
        mlp.up_proj = _shrink(mlp.up_proj, idx, 0)
        mlp.down_proj = _shrink(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = n
    pruned.config.intermediate_size = n
    return pruned.eval()
