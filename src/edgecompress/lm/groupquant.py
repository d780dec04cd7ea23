"""Group-wise weight quantization on ggml's grids (the recipe that records it is
:class:`edgecompress.quant_recipe.WeightOnlyRecipe`).

Each row of a weight matrix is cut into groups of ``group_size`` consecutive input weights;
each group gets one scale (and, asymmetric, one minimum), stored as float16 like ggml does. The
rounding rules are those of ggml's reference quantizers, so the simulated torch weights are the
very values a GGUF file of the matching type holds:

* 8-bit symmetric = ``Q8_0``: ``d = max|w| / 127``, ``q = round(w / d)`` in −127…127.
* 4-bit symmetric = ``Q4_0``: ``d = w_extreme / −8`` (the signed weight of largest magnitude),
  ``q = trunc(w / d + 8.5)`` in 0…15, value ``d·(q − 8)`` (the side opposite the extreme
  reaches only 7·|d|, so weights there may be one step off).
* asymmetric (4 or 8 bits) = ``Q4_1`` at 4 bits: ``d = (max − min) / (2^bits − 1)``,
  ``q = trunc((w − min) / d + 0.5)``, value ``d·q + min``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


def _round_away(v: torch.Tensor) -> torch.Tensor:
    """Round half away from zero (C ``roundf``, what ggml's Q8_0 uses), computed as the gguf
    package does (floor of twice the fraction) so that values just below .5 round alike."""
    a = v.abs()
    floored = torch.floor(a)
    return torch.sign(v) * (floored + torch.floor(2 * (a - floored)))


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))


def _half(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


def quantize_groups(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """``w`` (rows × inputs) with every group replaced by its dequantized grid values.

    The last dimension must be a multiple of ``group_size``. Computed in float32; the result
    has ``w``'s dtype.
    """
    if w.shape[-1] % group_size:
        raise ConfigError(f"a weight with {w.shape[-1]} inputs per row cannot be cut into groups "
                          f"of {group_size}; choose a group_size that divides it or skip the layer")
    g = w.detach().to(torch.float32).reshape(-1, group_size)
    if symmetric and bits == 8:
        d = g.abs().amax(dim=1, keepdim=True) / 127
        q = _round_away(g * _inverse(d))
        out = _half(d) * q
    elif symmetric:
        levels = 2 ** (bits - 1)
        idx = g.abs().argmax(dim=1, keepdim=True)
        d = torch.gather(g, 1, idx) / -levels
        q = torch.trunc(g * _inverse(d) + (levels + 0.5)).clamp(0, 2 * levels - 1)
        out = _half(d) * (q - levels)
    else:
        lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
        d = (hi - lo) / (2 ** bits - 1)
        q = torch.trunc((g - lo) * _inverse(d) + 0.5).clamp(0, 2 ** bits - 1)
        out = _half(d) * q + _half(lo)
    return out.reshape(w.shape).to(w.dtype)


def group_steps(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """The quantization step of each weight's group, broadcast to ``w``'s shape."""
    g = w.detach().to(torch.float32).reshape(-1, group_size)
    if symmetric:
        d = g.abs().amax(dim=1, keepdim=True) / (127 if bits == 8 else 2 ** (bits - 1))
    else:
        d = (g.amax(dim=1, keepdim=True) - g.amin(dim=1, keepdim=True)) / (2 ** bits - 1)
    return d.expand_as(g).reshape(w.shape)


def recipe_facts(recipe: Any) -> dict[str, Any]:
    """The recipe as plain data for artifact metadata."""
    return {"bits": recipe.bits, "group_size": recipe.group_size, "symmetric": recipe.symmetric,
            "embeddings": recipe.embeddings, "layers": len(recipe.layers)}
