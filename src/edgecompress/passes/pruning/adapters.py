"""Model-specific knowledge the dependency graph cannot infer from one traced forward pass.

* ``nn.MultiheadAttention``: the embedding must stay divisible by the head count, so Torch-Pruning
  is told each layer's ``num_heads`` (it then removes the same dimension from every head).
* torchvision ``VisionTransformer`` keeps its width in ``hidden_dim`` (used by a reshape in
  ``forward``); it is updated after pruning so the model keeps running and reloads.
* Window attention (torchvision Swin v1/v2, MaxViT): Swin computes the head size from the input
  width inside a functional kernel that calls ``F.linear`` on its weights, and Torch-Pruning's
  index mapping stalls (minutes to hours) on the window partition reshapes of both. There only
  the *inner* widths are pruned — MLP hidden layers, MBConv expansions and squeeze-excitation
  bottlenecks — which hold most of the weights; the residual width and the heads are kept.
* Channel shuffle (torchvision ShuffleNetV2): ``view(b, 2, c/2, h, w)`` → transpose → ``view``
  permutes channels, which Torch-Pruning's reshape index mapping cannot express (it divides by
  zero while building the graph). Every block's input and output width flows through a shuffle,
  so only widths no shuffle touches are pruned: the stem, each block's hidden width (first 1×1
  of the main branch and its depthwise conv) and the final 1×1 conv. The graph build skips the
  shuffle reshapes, which is safe because no group that is cut crosses them (the same holds for
  the patch-merging concatenations of Swin-S/B, whose channel count Torch-Pruning cannot infer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .analysis import PRUNABLE
from .attention import Attention, find_attentions, head_counts, update_attributes

# attention modules whose head size is recomputed from the input inside forward()
_WINDOW_ATTENTION = {"ShiftedWindowAttention", "ShiftedWindowAttentionV2",
                     "RelativePositionalMultiHeadAttention"}


def _class_names(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


def _inner_roots(module: nn.Module) -> list[nn.Module]:
    """Layers of ``module`` whose output width is private to the block (safe to prune alone)."""
    kind = type(module).__name__
    if isinstance(module, nn.Sequential):
        linears = [c for c in module.children() if isinstance(c, nn.Linear)]
        if len(linears) >= 2:  # an MLP: the hidden width sits between its first two Linears
            return [linears[0]]
    if kind == "MBConv" and hasattr(module, "layers") and hasattr(module.layers, "conv_a"):
        # the expansion width is shared by the depthwise conv and the squeeze-excitation's
        # output gate; Torch-Pruning drops a group holding any ignored layer, so list all three
        layers = module.layers
        shared = [layers.conv_a[0], layers.conv_b[0]]
        se = getattr(layers, "squeeze_excitation", None)
        return shared + ([se.fc2] if se is not None and hasattr(se, "fc2") else [])
    if kind == "SqueezeExcitation" and hasattr(module, "fc1"):
        return [module.fc1]
    return []


def _is_shufflenet(model: nn.Module) -> bool:
    return "ShuffleNetV2" in _class_names(model)


def _shuffle_free_roots(model: nn.Module) -> list[nn.Module]:
    """ShuffleNetV2 layers whose output channels never pass through a channel shuffle.

    A depthwise conv shares its input's width, and Torch-Pruning drops any group that holds an
    ignored layer, so the depthwise convs on these widths are listed too: each block's main
    branch (after its first 1×1) and the first block's side branch (it reads the stem)."""
    roots = [seq[0] for seq in (getattr(model, "conv1", None), getattr(model, "conv5", None))
             if isinstance(seq, nn.Sequential) and isinstance(seq[0], nn.Conv2d)]
    blocks = [b for b in model.modules() if type(b).__name__ == "InvertedResidual"
              and isinstance(getattr(b, "branch2", None), nn.Sequential)]
    for block in blocks:
        roots += [block.branch2[0], block.branch2[3]]
    if blocks and isinstance(blocks[0].branch1, nn.Sequential) and len(blocks[0].branch1):
        roots.append(blocks[0].branch1[0])
    return roots


def inner_only_layers(model: nn.Module) -> list[nn.Module] | None:
    """For window-attention and channel-shuffle models, the layers allowed to lose channels
    (else None: every layer may)."""
    if _class_names(model) & _WINDOW_ATTENTION:
        return [root for module in model.modules() for root in _inner_roots(module)]
    if _is_shufflenet(model):
        return _shuffle_free_roots(model)
    return None


@contextmanager
def graph_build_guards(model: nn.Module) -> Iterator[None]:
    """Let Torch-Pruning build and walk the graph of a model pruned on inner widths only.

    Its index mapping (re-derived whenever it collects a group) divides by zero on the
    channel shuffle's 5-D view and adds ``None`` where its shape inference gives up (Swin-S/B
    patch merging: the recursion budget runs out). Those reshapes and concatenations are left
    unmapped, which is safe only because no group that is cut crosses them (module docstring).
    """
    if inner_only_layers(model) is None:
        yield
        return
    from torch_pruning.dependency import index_mapping

    originals = {"update_reshape_index_mapping": ZeroDivisionError,
                 "update_concat_index_mapping": TypeError}
    saved = {name: getattr(index_mapping, name) for name in originals}

    def tolerant(name: str) -> Any:
        def update(graph: Any, node: Any) -> None:
            try:
                saved[name](graph, node)
            except originals[name]:
                pass  # left unmapped: no cut group crosses this node

        return update

    for name in originals:
        setattr(index_mapping, name, tolerant(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(index_mapping, name, fn)


def pruner_options(model: nn.Module) -> dict[str, Any]:
    """Extra Torch-Pruning arguments for ``model`` (num_heads, layers to keep whole)."""
    options: dict[str, Any] = {}
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    heads.update(head_counts(find_attentions(model)))
    if heads:
        options["num_heads"] = heads
    roots = inner_only_layers(model)
    if roots is not None:
        keep = set(map(id, roots))
        options["ignored_layers"] = [m for m in model.modules()
                                     if isinstance(m, PRUNABLE) and id(m) not in keep]
    return options


def after_prune(model: nn.Module, attentions: list[Attention], heads: dict[nn.Module, int]) -> None:
    """Bring plain attributes in line with the pruned weights (``attentions`` found before
    pruning; ``heads``: Torch-Pruning's head counts after it)."""
    update_attributes(attentions, heads)
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "conv_proj"):
        model.hidden_dim = model.conv_proj.out_channels
