"""Ultralytics blocks rewritten so Torch-Pruning can follow their channels.

A ``C2f`` block (YOLOv8; YOLO11's ``C3k2`` is one too) runs one 1×1 convolution and splits
its output in two halves with ``chunk``: Torch-Pruning cannot map a pruned channel of that
convolution through the split (it fails with an index out of range), so no YOLOv8 layer that
feeds a C2f could be pruned. :class:`SplitC2f` computes the same function with the two halves
as two convolutions (the weights of the one, cut in two), which the dependency graph follows
(Torch-Pruning's own YOLOv8 example makes the same change). Outputs are unchanged (tested).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# what Ultralytics' DetectionModel reads from each layer to route its graph
_ROUTING = ("f", "i", "type", "np")


def _half(conv: nn.Module, rows: slice) -> nn.Module:
    """A copy of an Ultralytics ``Conv`` (conv + BatchNorm + activation) keeping ``rows`` of
    its output channels."""
    part = copy.deepcopy(conv)
    c = part.conv
    c.weight = nn.Parameter(c.weight.detach()[rows].clone())
    if c.bias is not None:
        c.bias = nn.Parameter(c.bias.detach()[rows].clone())
    c.out_channels = c.weight.shape[0]
    bn = getattr(part, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        bn.weight = nn.Parameter(bn.weight.detach()[rows].clone())
        bn.bias = nn.Parameter(bn.bias.detach()[rows].clone())
        bn.running_mean = bn.running_mean[rows].clone()
        bn.running_var = bn.running_var[rows].clone()
        bn.num_features = c.out_channels
    return part


class SplitC2f(nn.Module):
    """A ``C2f`` whose ``cv1`` is two convolutions, one per half (same outputs)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        c = int(block.c)
        self.cv0, self.cv1 = _half(block.cv1, slice(0, c)), _half(block.cv1, slice(c, 2 * c))
        self.cv2, self.m = block.cv2, block.m
        for name in _ROUTING:
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def _is_c2f(module: Any) -> bool:
    return (any(c.__name__ == "C2f" for c in type(module).__mro__)
            and all(hasattr(module, a) for a in ("c", "cv1", "cv2", "m"))
            and hasattr(module.cv1, "conv"))


def split_c2f(model: nn.Module) -> int:
    """Replace every C2f block inside ``model`` by a :class:`SplitC2f`; how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_c2f(child):
                setattr(parent, name, SplitC2f(child))
                count += 1
    return count


__all__ = ["SplitC2f", "split_c2f"]
