"""Multi-head attention of transformer libraries: what Torch-Pruning must be told, and what to fix
after it cut.

Torch-Pruning keeps each head's channels together only when it knows how many heads a
projection holds (``num_heads``): it then removes the same dimensions from every head, so the
head count stays and each head shrinks. Without it, a ViT whose attention reshapes with
``view(..., -1, head_dim)`` still runs after pruning, with channels of different heads mixed
into fewer heads — a silently different model.

An attention module is recognised by its head count attribute (``num_attention_heads``,
``num_heads``, ``n_heads``) and its query/key/value projections: separate Linears (Hugging Face
``query``/``key``/``value`` or ``q_proj``/``k_proj``/``v_proj``) or one fused Linear (timm
``qkv``). After pruning, the attributes a forward reads to reshape (``head_dim``,
``attention_head_size``, ``all_head_size``, ``attn_dim``) are set from the pruned weights.
``nn.MultiheadAttention`` is handled by Torch-Pruning itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads")
_SEPARATE = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"),
             ("q_lin", "k_lin", "v_lin"))
_FUSED = ("qkv",)
_HEAD_SIZE = ("head_dim", "attention_head_size", "head_size")
_ALL_HEADS = ("all_head_size", "attn_dim")


@dataclass
class Attention:
    """One attention module, its head count and its query/key/value projection(s)."""

    module: nn.Module
    heads: int
    projections: list[nn.Linear]  # [q, k, v], or [qkv] when fused

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    def width(self) -> int:
        """Channels of all heads together (of one of q, k, v)."""
        out = self.projections[0].out_features
        return out // 3 if self.fused else out


def _head_count(module: nn.Module) -> int | None:
    for name in _HEAD_COUNTS:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _projections(module: nn.Module) -> list[nn.Linear]:
    children = dict(module.named_children())
    for names in _SEPARATE:
        if all(isinstance(children.get(n), nn.Linear) for n in names):
            return [children[n] for n in names]
    for name in _FUSED:
        if isinstance(children.get(name), nn.Linear):
            return [children[name]]
    return []


def find_attentions(model: nn.Module) -> list[Attention]:
    """Attention modules whose heads Torch-Pruning must keep together."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            continue
        heads, projections = _head_count(module), _projections(module)
        if heads is None or not projections:
            continue
        attention = Attention(module, heads, projections)
        if attention.width() % heads == 0 and (not attention.fused
                                              or projections[0].out_features % 3 == 0):
            found.append(attention)
    return found


def head_counts(attentions: list[Attention]) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads``: each projection and the heads its output holds."""
    return {p: a.heads for a in attentions for p in a.projections}


def update_attributes(attentions: list[Attention], heads: dict[nn.Module, int]) -> None:
    """Set the head size attributes of each attention from its pruned projections.

    ``heads``: Torch-Pruning's head counts after pruning (the same as before unless whole heads
    were removed).
    """
    for attention in attentions:
        count = heads.get(attention.projections[0], attention.heads)
        width = attention.width()
        for name in _HEAD_COUNTS:
            if isinstance(getattr(attention.module, name, None), int):
                setattr(attention.module, name, count)
        for name in _HEAD_SIZE:
            if isinstance(getattr(attention.module, name, None), int):
                setattr(attention.module, name, width // count)
        for name in _ALL_HEADS:
            if isinstance(getattr(attention.module, name, None), int):
                setattr(attention.module, name, width)
        attention.heads = count
