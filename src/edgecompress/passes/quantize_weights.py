"""QuantizeWeights: group-wise weight-only quantization (4 or 8 bits), activations in float.

The way language models go to the edge (llama.cpp's Q4_0 / Q8_0 …): each Linear layer's weight
rows are cut into groups of ``group_size`` inputs with one float16 scale per group; activations
stay float. The pass replaces every selected weight by its dequantized grid values — the very
values the GGUF exporter writes — so the pipeline measures the quantized model's perplexity in
torch, and records a :class:`~edgecompress.quant_recipe.WeightOnlyRecipe` (plus the float model)
for exporters to realise natively.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..forms import Form
from ..lm.groupquant import quantize_groups
from ..quant_recipe import WeightOnlyRecipe
from ..options import option
from .base import Pass, PassContext, StageOutput

log = logging.getLogger("edgecompress")


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: a Linear whose weight is stored (inputs × outputs)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_layers(model: nn.Module, embeddings: bool, skip: tuple[str, ...]
                  ) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every weight this pass quantizes, each shared tensor once."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    seen: set[int] = set()
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        is_embed = module is embed
        if not (isinstance(module, nn.Linear) or _is_conv1d(module) or is_embed):
            continue
        weight = module.weight
        tied = embed is not None and weight is embed.weight
        if tied and not embeddings:
            continue  # the embedding (or a head tied to it) stays float unless asked
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        yield name, module


def quantize_module(module: nn.Module, bits: int, group_size: int, symmetric: bool) -> None:
    """Replace ``module.weight`` in place by its group-quantized values (groups along inputs)."""
    w = module.weight.data
    if _is_conv1d(module):  # (inputs, outputs): quantize the transposed view's rows
        module.weight.data = quantize_groups(w.t(), bits, group_size, symmetric).t().contiguous()
    else:
        module.weight.data = quantize_groups(w, bits, group_size, symmetric)


@dataclass
class QuantizeWeights(Pass):
    """Weight-only group-wise quantization (``bits`` 4 or 8, float16 group scales).

    Linear layers are quantized (GPT-2's ``Conv1D`` too); the token embedding (and an output
    head tied to it) only with ``embeddings=True``. Norms, biases and position embeddings stay
    float. ``scheme="sym"`` uses ggml's symmetric grids (Q8_0 at 8 bits, Q4_0 at 4 bits),
    ``"asym"`` a per-group minimum too (Q4_1 at 4 bits). Export to ``gguf`` realises the recipe
    natively; formats without weight-only integer types refuse it.
    """

    name = "quantize_weights"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FAKEQUANT

    bits: int = option(4, "Bits per weight.", choices=(4, 8))
    group_size: int = option(32, "Consecutive input weights sharing one scale (ggml: 32).",
                             low=2)
    scheme: str = option("sym", "Symmetric grids, or asymmetric with a per-group minimum.",
                         choices=("sym", "asym"))
    embeddings: bool = option(False, "Also quantize the token embedding (and a head tied to it).")
    skip: tuple[str, ...] = option((), "Module names kept in float (a container's name keeps all "
                                       "layers inside it), e.g. ['lm_head'].")

    def validate(self) -> None:
        if isinstance(self.skip, str):
            raise ConfigError(f"QuantizeWeights: skip must be a list of module names, e.g. "
                              f"skip=['{self.skip}'], not a string")
        self.skip = tuple(self.skip)

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        float_model = copy.deepcopy(model).eval()
        layers = list(weight_layers(model, self.embeddings, self.skip))
        if not layers:
            raise ConfigError("QuantizeWeights found no Linear layers to quantize (all skipped?); "
                              "it quantizes nn.Linear, GPT-2 Conv1D and, with embeddings=True, "
                              "the token embedding")
        symmetric = self.scheme == "sym"
        with torch.no_grad():
            for name, module in layers:
                try:
                    quantize_module(module, self.bits, self.group_size, symmetric)
                except ConfigError as exc:
                    raise ConfigError(f"QuantizeWeights: layer '{name}': {exc}") from None
        recipe = WeightOnlyRecipe(bits=self.bits, group_size=self.group_size,
                                  symmetric=symmetric, embeddings=self.embeddings,
                                  skip=self.skip, layers=tuple(n for n, _ in layers))
        log.info("QuantizeWeights: %d weight tensors to %s", len(layers), recipe.describe())
        return StageOutput(model, notes={"quantized_weights": len(layers),
                                         "weight_recipe": recipe.describe()},
                           recipe=recipe, float_model=float_model)
