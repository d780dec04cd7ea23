"""torch.fx clean-up of an onnx2torch module: its ONNX-flavoured wrappers become the plain
torch modules and operators the rest of edgecompress knows.

onnx2torch wraps an ONNX ``Add`` in ``OnnxBinaryMathOperation``, a ``Pad`` in
``OnnxPadStatic``, a ``GlobalAveragePool`` in a module with a custom ONNX export and a constant
``Reshape`` in a module with a data-dependent check (which stops ``torch.export``). Torch-Pruning
and our PTQ simulation recognise ``operator.add``, ``nn.ZeroPad2d`` and ``nn.AdaptiveAvgPool2d``
(residual sums share one quantizer, pads pass ranges through), and torch's exporters handle them
without custom symbolic functions, so each wrapper is replaced by its plain equivalent (same
values, checked by the parity measurement that follows).
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.fx
from torch import nn

_BINARY = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul}


def _binary(module: nn.Module) -> Callable | None:
    if getattr(module, "broadcast", None) == 1 and getattr(module, "axis", None) is not None:
        return None  # pre-opset-7 broadcast along an axis: keep onnx2torch's version
    # Div stays: ONNX's integer division truncates, and shape arithmetic can be integer
    return _BINARY.get(getattr(module, "math_op_function", None))


def _plain_module(module: nn.Module) -> nn.Module | None:
    """The plain torch module equal to an onnx2torch wrapper (None: keep it)."""
    kind = type(module).__name__
    if kind == "OnnxPadStatic" and module.mode == "constant":
        pads = tuple(int(p) for p in module.pads)
        if len(pads) == 4:
            return nn.ZeroPad2d(pads) if module.constant_value == 0 else \
                nn.ConstantPad2d(pads, float(module.constant_value))
    if kind == "OnnxGlobalAveragePoolWithKnownInputShape" and list(module._x_dims) == [2, 3]:
        return nn.AdaptiveAvgPool2d(1)
    return None


def _replace_submodules(root: nn.Module) -> int:
    changed = 0
    for parent in list(root.modules()):
        for child_name, child in list(parent.named_children()):
            plain = _plain_module(child)
            if plain is not None:
                setattr(parent, child_name, plain)
                changed += 1
    return changed


def _binary_to_operators(gm: torch.fx.GraphModule) -> int:
    modules, changed = dict(gm.named_modules()), 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        fn = _binary(modules[node.target])
        if fn is None:
            continue
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(fn, tuple(node.args))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed += 1
    return changed


def _constant(gm: torch.fx.GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def _static_reshapes(gm: torch.fx.GraphModule) -> int:
    """An ONNX Reshape to a constant shape without 0 (ONNX's "copy this dim") is
    ``x.reshape(*shape)``: same values, and no data-dependent check that stops torch.export."""
    modules, changed = dict(gm.named_modules()), 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]).__name__ != "OnnxReshape":
            continue
        shape = _constant(gm, node.args[1]) if len(node.args) == 2 else None
        if shape is None or shape.dim() != 1 or bool((shape == 0).any()):
            continue
        with gm.graph.inserting_after(node):
            new = gm.graph.call_method("reshape", (node.args[0], *(int(d) for d in shape)))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed += 1
    return changed


def simplify(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Rewrite ``gm`` in place; the counts of what was replaced (for the report's notes)."""
    ops = _binary_to_operators(gm)
    reshapes = _static_reshapes(gm)
    mods = _replace_submodules(gm)
    gm.graph.eliminate_dead_code()  # the shape constants the reshapes no longer read
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return {"binary_ops_to_operators": ops, "reshapes_to_static": reshapes,
            "modules_to_torch_nn": mods}
