"""Which nodes ONNX Runtime's static quantizer may quantize, so the file realises the simulation.

When torch.fx traces the model, the simulated INT8 model quantizes what ORT's graph quantizes
(each tensor once, Add, Mul, pooling, attention's matmuls...: see ``quant/sharing.py``) and ORT
quantizes the whole graph. When fx cannot trace it (HF ViT and BERT read module attributes and
branch on values in their forward), the simulation quantizes only each Conv / Linear: its
weights, its input and a Conv's output. Everything else stays float there: attention's
activation × activation MatMuls, Softmax, the residual Adds, LayerNorm, a Linear's output. ORT is then told the
same, so the artifact realises what the pipeline measured instead of quantizing more than it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

LAYER_OPS = ("Conv", "MatMul", "Gemm")  # what a torch Conv / Linear becomes in ONNX


def layers_only(recipe: "QuantRecipe") -> bool:
    """True when the recipe's simulated model quantizes each layer and nothing between layers
    (fx could not trace the model; the pass records it)."""
    return bool(getattr(recipe, "layers_only", False))


def layer_scope(proto: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """``quantize_static`` arguments for a layers-only recipe: the op types to quantize, the
    nodes to leave float (Conv / MatMul / Gemm without a constant weight: no torch layer, e.g.
    attention's Q·Kᵀ) and the extra options (MatMul / Gemm outputs stay float, as a simulated
    Linear's do; a Conv's output is quantized, as the simulated Conv's is)."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    float_nodes = [n.name for n in proto.graph.node
                   if n.op_type in LAYER_OPS and (len(n.input) < 2 or n.input[1] not in constants)]
    return list(LAYER_OPS), float_nodes, {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}


__all__ = ["LAYER_OPS", "layer_scope", "layers_only"]
