"""An edgecompress plugin: ``ClipWeights`` clamps conv/linear weights to a percentile range.

Installed with ``pip install examples/plugin_package``, it is usable by name in recipes::

    passes:
      - pass: clip_weights
        percentile: 99.9
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import edgecompress as ec
from edgecompress.options import option


@dataclass
class ClipWeights(ec.Pass):
    """Clamp each conv/linear weight tensor to its ±``percentile`` magnitude (outlier removal
    that makes per-tensor INT8 ranges tighter)."""

    name = "clip_weights"
    accepts = (ec.Form.TORCH_FLOAT,)
    percentile: float = option(99.9, "Magnitude percentile kept per tensor.", low=50, high=100)

    def run(self, model: torch.nn.Module, ctx: ec.PassContext) -> torch.nn.Module:
        clipped = 0
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    limit = torch.quantile(m.weight.abs().flatten().float(), self.percentile / 100)
                    clipped += int((m.weight.abs() > limit).sum())
                    m.weight.clamp_(-limit, limit)
        ctx.note("clipped_weights", clipped)
        return model
