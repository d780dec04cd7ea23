"""Fake-quantized torch models that simulate ONNX Runtime's QDQ INT8 numerics: wrapping.

:func:`wrap` puts each quantized layer (Conv1d/2d/3d, Linear) in a
:class:`~edgecompress.quant.fakequant.QuantLayer` (the primitives), then
:func:`~edgecompress.quant.sharing.share_quantizers` makes each tensor quantized once, where it
is produced. The wrapped model keeps plain tensors only (weights plus range buffers), so it is
rebuilt from the float model and its state dict (:func:`rebuild`).
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Iterable

from torch import nn

from ..errors import ConfigError
from .fakequant import (QUANTIZABLE, W_QMAX, W_QMAX_REDUCED, ActQuant, QuantLayer, act_qparams,
                        fake_quant_bias, fake_quant_plain, fake_quant_weight, float_numerics,
                        weight_scale)
from .sharing import SHARING_VERSION, layer_output_modes, output_modes, share_quantizers

log = logging.getLogger("edgecompress")

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe



def cpu_has_vnni() -> bool:
    """True when this x86 CPU has a VNNI dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear layers a static recipe can quantize, by name (attention internals excluded:
    ``nn.MultiheadAttention`` reads its projection weights directly, not through the module)."""
    inside_mha = {f"{n}.{c}" for n, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_modules() if c}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and n and n not in inside_mha}


def resolve_skip(model: nn.Module, skip: Iterable[str], candidates: dict[str, Any]) -> set[str]:
    """Layer names that ``skip`` keeps in float; ConfigError for names that match no layer.

    A skip entry is a module name; a container's name keeps every quantizable layer inside it.
    """
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for entry in skip:
        hits = {n for n in candidates if n == entry or n.startswith(entry + ".")}
        if not hits:
            if entry in modules:
                raise ConfigError(f"skip={entry!r} names a {type(modules[entry]).__name__}, which "
                                  f"holds no quantizable layer (Conv or Linear); quantizable "
                                  f"layers: {_listing(candidates)}")
            raise ConfigError(f"skip={entry!r} is not a layer of {type(model).__name__}; "
                              f"quantizable layers: {_listing(candidates)}")
        chosen |= hits
    return chosen


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    more = f" … (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def wrap(model: nn.Module, per_channel: bool, skip: set[str],
         outputs: dict[str, str | None] | None = None, weight_qmax: int = W_QMAX) -> nn.Module:
    """Wrap every quantizable layer not in ``skip`` in a :class:`QuantLayer` (in place).

    ``outputs`` (layer → output mode) defaults to what :func:`output_modes` finds.
    """
    layers = {n: m for n, m in quantizable_layers(model).items() if n not in skip}
    if outputs is None:
        outputs = output_modes(model, layers)
    for name, layer in layers.items():
        _set_child(model, name, QuantLayer(layer, per_channel, outputs.get(name), weight_qmax))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """A float copy: every :class:`QuantLayer` replaced by the layer it wraps."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLayer):
            _set_child(model, name, module.layer)
    return model


def act_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    """``"<layer>:in"`` / ``"<layer>:out"`` → the quantizer of that layer's input / output;
    ``"<node>_q:out"`` → a quantizer :func:`share_quantizers` put after a non-layer op."""
    found: dict[str, ActQuant] = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantLayer):
            found[f"{n}:in"] = m.act_in
            if m.act_out is not None:
                found[f"{n}:out"] = m.act_out
    held = {id(q) for q in found.values()}
    for n, m in model.named_modules():
        if isinstance(m, ActQuant) and id(m) not in held:
            found[f"{n}:out"] = m
    return found


def ranges_of(model: nn.Module) -> dict[str, list[float]]:
    """``"<layer>:in"`` / ``"<layer>:out"`` → [lo, hi] (plain data for the recipe)."""
    return {n: list(q.range()) for n, q in act_quantizers(model).items() if q.ready}


def set_ranges(model: nn.Module, ranges: dict[str, list[float] | tuple[float, float]]) -> None:
    """Set the quantizers named in ``ranges``; one shared by several names (see
    :func:`share_quantizers`) gets the union of their ranges, as ORT merges them."""
    merged: dict[int, tuple[float, float]] = {}
    for name, q in act_quantizers(model).items():
        if name not in ranges:
            continue
        lo, hi = ranges[name]
        if id(q) in merged:
            lo, hi = min(lo, merged[id(q)][0]), max(hi, merged[id(q)][1])
        merged[id(q)] = (lo, hi)
        q.set_range(lo, hi)


def set_observing(model: nn.Module, on: bool) -> None:
    for q in act_quantizers(model).values():
        q.observing = on


def build_simulated(float_model: nn.Module, recipe: "QuantRecipe") -> nn.Module:
    """The simulated model of ``recipe`` on a copy of ``float_model``, ranges from the recipe."""
    model = wrap(copy.deepcopy(float_model).eval(), recipe.per_channel,
                 set(recipe.skipped_layers), dict(recipe.outputs) or None, recipe.weight_qmax)
    version = recipe.one_quantizer_per_tensor
    if version:  # recipes before it: each layer quantizes its own input
        model, _ = share_quantizers(model, version)
    set_ranges(model, recipe.ranges)
    return model.eval()


def rebuild(float_model: nn.Module, recipe: "QuantRecipe", weights: dict[str, Any]) -> nn.Module:
    """Rebuild a saved simulated model (``DeployableModel.load`` calls this through the recipe)."""
    if recipe.scheme == "dynamic":
        from .dynamic import quantize_dynamic_torch

        return quantize_dynamic_torch(float_model, recipe.layers, set(recipe.skip))
    model = build_simulated(float_model, recipe)
    model.load_state_dict(weights, strict=True)
    return model.eval()


__all__ = ["QUANTIZABLE", "SHARING_VERSION", "W_QMAX", "W_QMAX_REDUCED", "ActQuant", "QuantLayer",
           "act_qparams", "act_quantizers", "build_simulated", "cpu_has_vnni", "fake_quant_bias",
           "fake_quant_plain", "fake_quant_weight", "float_numerics", "layer_output_modes",
           "output_modes",
           "quantizable_layers", "ranges_of", "rebuild", "resolve_skip", "set_observing",
           "set_ranges", "share_quantizers", "unwrap", "weight_scale", "wrap"]
