"""Input layout of a converted module: NHWC as the Keras model took it, or NCHW on request."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .onnx_graph import ConversionError
from .source import SOURCE_ATTR, source_of

_TO_NCHW = [0, 3, 1, 2]


def _leading_transpose(gm: torch.fx.GraphModule) -> torch.fx.Node | None:
    """The NHWC→NCHW transpose the single input goes through first (tf2onnx writes one)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1 or len(inputs[0].users) != 1:
        return None
    user = next(iter(inputs[0].users))
    module = gm.get_submodule(user.target) if user.op == "call_module" else None
    perm = getattr(module, "perm", None)
    if perm is not None and [int(p) for p in perm] == _TO_NCHW:
        return user
    return None


def to_nchw(module: nn.Module) -> nn.Module:
    """Make a module converted from an NHWC model take NCHW (in place): its leading
    transpose is removed, and the recorded layout and input shape say so. Use it to mix a
    Keras model with NCHW data or a torch teacher; artifacts then take NCHW too."""
    info = source_of(module)
    node = _leading_transpose(module) if isinstance(module, torch.fx.GraphModule) else None
    if info.get("layout") != "NHWC" or node is None:
        raise ConversionError("to_nchw takes a module from ec.from_keras / ec.from_onnx whose "
                              "input is NHWC and goes through one NHWC→NCHW transpose first")
    node.replace_all_uses_with(node.args[0])
    module.graph.erase_node(node)
    module.delete_all_unused_submodules()
    module.recompile()
    shape = info["inputs"][0]["shape"]
    info["inputs"] = [{**info["inputs"][0], "shape": [shape[i] for i in _TO_NCHW]}]
    info["layout"] = "NCHW"
    setattr(module, SOURCE_ATTR, info)
    return module
