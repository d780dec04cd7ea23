"""The one BatchNorm fold: fold Conv+BatchNorm and Linear+BatchNorm1d pairs into one layer.

The Fuse pass, the static quantization passes and the TorchScript exporter all fold through
here. Pairs are found by tracing with ``torch.fx`` (a BN whose producer has no other reader);
a model fx cannot trace is traced part by part (each largest submodule fx can follow), plus
the adjacent pairs inside ``nn.Sequential`` containers. The
module classes are kept (a folded BN becomes ``nn.Identity``), so the model still saves and
reloads by structure.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

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


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, batchnorm) names to fold: traced at the largest scope fx can follow.

    A model fx cannot trace as a whole (Ultralytics' YOLO: its C2f blocks iterate over a
    chunk) is traced submodule by submodule, so a block like ``act(bn(conv(x)))`` still has
    its pair found; the rule inside a submodule is the same (the BN is its producer's only
    reader there, and a submodule that also returned the producer's output would give it a
    second reader). Adjacent pairs of ``nn.Sequential`` containers are added in any case."""
    try:
        return _traced_pairs(model)
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors
        pass
    pairs = [(f"{name}.{a}", f"{name}.{b}") for name, child in model.named_children()
             for a, b in batchnorm_pairs(child)]
    return pairs + [p for p in _sequential_pairs(model) if p not in pairs]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorm into the preceding Conv/Linear in place; how many were folded."""
    return fuse_pairs(model.eval(), batchnorm_pairs(model))
