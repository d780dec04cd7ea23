"""Fuse: fold BatchNorm into the preceding Conv or Linear for inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from ..errors import PassError
from ..fold import _sequential_pairs, _traced_pairs, fuse_pairs
from ..forms import Form
from ..options import option
from .base import Pass, PassContext, StageOutput

log = logging.getLogger("edgecompress")

@dataclass
class Fuse(Pass):
    """Fold Conv+BatchNorm and Linear+BatchNorm1d pairs into one layer (inference only).

    Pairs are found by tracing the model with ``torch.fx``; the original module classes are
    kept (the BN becomes ``nn.Identity``), so the model still saves and reloads by structure.
    A model ``torch.fx`` cannot trace is not rejected: only adjacent pairs inside
    ``nn.Sequential`` containers are fused (that order is certain) and a warning says so.
    The fused model's outputs are checked against the unfused ones.
    """

    name = "fuse"
    accepts = (Form.TORCH_FLOAT,)
    folds_batchnorm = True
    produces = Form.TORCH_FLOAT

    tolerance: float = option(1e-4, "Largest allowed output change, relative to the output scale.",
                              low=0, low_open=True)

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        model.eval()
        try:
            pairs = _traced_pairs(model)
            how = "torch.fx"
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds of errors
            log.warning("Fuse: torch.fx cannot trace %s (%s); fusing only Conv/Linear+BN pairs "
                        "that sit next to each other in nn.Sequential containers",
                        type(model).__name__, str(exc).splitlines()[0][:200])
            pairs, how = _sequential_pairs(model), "nn.Sequential scan (model not traceable)"
        x = ctx.data.samples("val", 8).to(next((p.device for p in model.parameters()), "cpu"))
        with torch.no_grad():
            before = model(x)
        fused = fuse_pairs(model, pairs)
        with torch.no_grad():
            diff = float((model(x) - before).abs().max())
        scale = max(1.0, float(before.abs().max()))
        ctx.note("fused_pairs", fused)
        ctx.note("fuse_method", how)
        ctx.note("fuse_max_abs_diff", diff)
        if diff > self.tolerance * scale:
            raise PassError(f"Fuse changed the outputs by {diff:.3g} (allowed "
                            f"{self.tolerance * scale:.3g}); the model may use BatchNorm outputs "
                            f"elsewhere. Remove Fuse from the pipeline for this model", "fuse")
        log.info("Fuse: folded %d BatchNorm layers (%s), max output change %.2e", fused, how, diff)
        return StageOutput(model)
