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

    class BatchNormLeaves(torch.fx.Tracer):  # a BN subclass (timm's BatchNormAct2d) stays whole
        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return isinstance(m, _BNS) or super().is_leaf_module(m, qualified_name)

    graph = BatchNormLeaves().trace(model)
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
        rest = _after_fold(bn)
        if rest is None:
            continue
        with torch.no_grad():
            fuse = fuse_linear_bn_eval if isinstance(producer, nn.Linear) else fuse_conv_bn_eval
            new = fuse(producer.eval(), bn.eval())
        _set_module(model, prod_name, new)
        _set_module(model, bn_name, rest)
        fused += 1
    return fused


def _after_fold(bn: nn.Module) -> nn.Module | None:
    """What stays of ``bn`` once its affine map is folded: nothing (Identity) for torch's
    BatchNorm; the dropout and activation timm's BatchNormAct2d applies after normalising (its
    forward: batch_norm, then ``drop``, then ``act``); None (do not fold) for other subclasses.
    Without it timm's MobileNetV3 / EfficientNet / LCNet kept every BatchNorm unfolded and the
    simulated INT8 model quantized each conv's output before the BN, where the ONNX file does
    after it."""
    if type(bn) in _BNS:
        return nn.Identity()
    children = dict(bn.named_children())
    if set(children) == {"drop", "act"} and type(bn).__name__ == "BatchNormAct2d":
        return nn.Sequential(children["drop"], children["act"])
    return None


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, batchnorm) names to fold: traced at the largest scope fx can follow.

    A model fx cannot trace as a whole (Ultralytics' YOLO: its C2f blocks iterate over a
    chunk; timm's MobileViT: its transformer) is traced submodule by submodule, so a block like
    ``act(bn(conv(x)))`` still has its pair found; adjacent pairs of ``nn.Sequential``
    containers are added in any case."""
    try:
        return _traced_pairs(model)
    except Exception:  # noqa: BLE001 - untraceable models: only certain pairs
        return sorted(set(_sequential_pairs(model)) | set(_submodule_pairs(model)))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorm into the preceding Conv/Linear in place; how many were folded."""
    return fuse_pairs(model.eval(), batchnorm_pairs(model))


def _submodule_pairs(model: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """The traced pairs of the largest submodules fx can trace, when the whole model cannot be
    (timm's MobileViT: its ConvNormAct blocks trace, its transformer does not; before, none of
    their BatchNorms was folded and the simulated INT8 model quantized each conv's output
    before its BN, where the ONNX file does after it)."""
    pairs: list[tuple[str, str]] = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        try:
            pairs += [(f"{path}.{a}", f"{path}.{b}") for a, b in _traced_pairs(child)]
        except Exception:  # noqa: BLE001 - fx raises many kinds of errors: look inside
            pairs += _submodule_pairs(child, f"{path}.")
    return pairs
