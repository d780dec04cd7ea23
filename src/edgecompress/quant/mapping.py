"""Which ONNX node computes which torch layer: how a recipe's per-layer facts (layers kept in
float, learned QAT ranges) reach the ONNX graph ORT quantizes.

The torch side is the layers' execution order with their weight shapes, recorded when the
recipe is made. The ONNX side is matched first by node name (the TorchScript exporter names a
node after its module path, e.g. ``/layer1/layer1.0/conv1/Conv``), then by order and weight
shape for the nodes names do not settle.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "LSTM", "GRU")
_RECURRENT = ("LSTM", "GRU")  # their ONNX weights are restacked: match by name only


@torch.no_grad()
def execution_order(model: nn.Module, example: torch.Tensor,
                    layers: dict[str, nn.Module]) -> list[list[Any]]:
    """[name, weight shape] of each layer in ``layers``, in the order the forward pass calls it."""
    seen: list[list[Any]] = []
    called: set[str] = set()

    def hook(name: str):
        def record(module: nn.Module, args: Any) -> None:
            if name not in called:
                called.add(name)
                weight = getattr(module, "weight", None)  # LSTM/GRU: their first matrix
                if not isinstance(weight, torch.Tensor):
                    weight = next(module.parameters())
                seen.append([name, list(weight.shape)])
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        from ..data.inputs import call_model, head, to_device  # tensor, tuple or dict inputs
        call_model(model, to_device(head(example, 1), device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _weighted_nodes(proto: Any) -> list[tuple[Any, list[int]]]:
    """Conv/Gemm/MatMul nodes whose second input is a constant weight, with its shape."""
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if node.op_type in _WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            out.append((node, inits[node.input[1]]))
    return out


def _module_path(node_name: str) -> str | None:
    """``/layers/layers.1/shortcut/shortcut.0/Conv`` → ``layers.1.shortcut.0``.

    The TorchScript exporter writes one scope per module: an attribute name, or for children
    of a container the container's name plus the index (``layers.1`` after ``layers``).
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        return None
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def _same_weight(torch_shape: list[int], onnx_shape: list[int]) -> bool:
    if torch_shape == onnx_shape:
        return True
    return len(torch_shape) == 2 and torch_shape[::-1] == onnx_shape  # MatMul holds W^T


def map_layers(proto: Any, order: list[list[Any]]) -> dict[str, Any]:
    """Torch layer name → ONNX node, for every layer of ``order`` that can be matched."""
    nodes = _weighted_nodes(proto)
    mapping: dict[str, Any] = {}
    used: set[int] = set()
    by_path = {}
    for i, (node, _) in enumerate(nodes):
        path = _module_path(node.name)
        if path is not None:
            by_path.setdefault(path, []).append(i)
    shapes = {name: shape for name, shape in order}
    for name, shape in order:
        hits = by_path.get(name, [])
        if len(hits) == 1 and (nodes[hits[0]][0].op_type in _RECURRENT
                               or _same_weight(shape, nodes[hits[0]][1])):
            mapping[name] = nodes[hits[0]][0]
            used.add(hits[0])
    cursor = 0
    for name, _shape in order:  # the rest in order, by weight shape
        if name in mapping:
            continue
        for i in range(cursor, len(nodes)):
            if i not in used and _same_weight(shapes[name], nodes[i][1]):
                mapping[name] = nodes[i][0]
                used.add(i)
                cursor = i + 1
                break
    return mapping
