"""Fuse: fold BatchNorm into the preceding Conv or Linear for inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..errors import PassError
from ..forms import Form
from ..options import option
from .base import Pass, PassContext

log = logging.getLogger("edgecompress")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _traced_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, batchnorm) module names where the BN is the producer's only consumer."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        producer = modules.get(src.target)
        if isinstance(producer, (*_CONVS, nn.Linear)):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacent (Conv|Linear, BN) children of nn.Sequential containers: safe without tracing."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if isinstance(a, (*_CONVS, nn.Linear)) and isinstance(b, _BNS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fuse_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> int:
    """Fold each BN into its producer in place and swap the BN for Identity; return the count."""
    fused = 0
    for prod_name, bn_name in pairs:
        producer, bn = model.get_submodule(prod_name), model.get_submodule(bn_name)
        if isinstance(producer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue  # batch statistics at inference: nothing constant to fold
        with torch.no_grad():
            fuse = fuse_linear_bn_eval if isinstance(producer, nn.Linear) else fuse_conv_bn_eval
            new = fuse(producer.eval(), bn.eval())
        _set_module(model, prod_name, new)
        _set_module(model, bn_name, nn.Identity())
        fused += 1
    return fused


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

    def run(self, model: nn.Module, ctx: PassContext) -> nn.Module:
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
        return model
