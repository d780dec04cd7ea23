"""Dynamic INT8 in torch: int8 weights, activations quantized on the fly per batch."""

from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
from torch import nn

DYNAMIC_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU}


# Linear subclasses that compute exactly ``nn.Linear`` (timm's only casts dtypes under
# TorchScript): quantized as Linear. Any other subclass may change forward and stays float.
PLAIN_LINEAR_SUBCLASSES = ("timm.layers.linear.Linear",)


def _plain_linear(m: nn.Module) -> bool:
    return type(m) is not nn.Linear and isinstance(m, nn.Linear) and \
        f"{type(m).__module__}.{type(m).__qualname__}" in PLAIN_LINEAR_SUBCLASSES


def dynamic_layers(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    """Modules of the requested kinds, by name (``nn.MultiheadAttention``'s ``out_proj`` is a
    Linear subclass torch declines to quantize dynamically; it stays float)."""
    kinds = tuple(DYNAMIC_TYPES[k] for k in layers)
    linear = nn.Linear in kinds
    return {n: m for n, m in model.named_modules()
            if n and (type(m) in kinds or linear and _plain_linear(m))}


def _as_plain_linears(model: nn.Module, names: Iterable[str]) -> None:
    """Replace the :data:`PLAIN_LINEAR_SUBCLASSES` modules in ``names`` with ``nn.Linear``
    holding the same parameters (torch's dynamic quantizer swaps exact types only)."""
    for name in names:
        module = model.get_submodule(name)
        if not _plain_linear(module):
            continue
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        plain.weight, plain.bias = module.weight, module.bias
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, plain)


def quantize_dynamic_torch(float_model: nn.Module, layers: Iterable[str],
                           skip: set[str]) -> nn.Module:
    """A copy of ``float_model`` with dynamic int8 Linear/LSTM/GRU modules.

    Uses ``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao, which
    has no dynamic LSTM/GRU; the eager modules still run and are what this simulates with).
    """
    from torch.ao.quantization import default_dynamic_qconfig

    model = copy.deepcopy(float_model).eval()
    spec = {name: default_dynamic_qconfig for name in dynamic_layers(model, layers)
            if name not in skip}
    _as_plain_linears(model, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        quantized = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8).eval()
    _disable_transformer_fast_path(quantized)
    return quantized


def _disable_transformer_fast_path(model: nn.Module) -> None:
    """Keep quantized encoder layers on the regular path.

    In eval mode ``nn.TransformerEncoderLayer`` tries a fused fast path that reads
    ``linear1.weight`` as a tensor; a dynamic quantized Linear exposes ``weight()`` instead and
    the check crashes. The fast path cannot run packed int8 weights anyway; marking the layer's
    activation as not ReLU/GELU is torch's own switch for "use the regular path" (the regular
    path calls ``self.activation``, which is unchanged).
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(
                isinstance(m, DynamicLinear) for m in module.modules()):
            module.activation_relu_or_gelu = 0
