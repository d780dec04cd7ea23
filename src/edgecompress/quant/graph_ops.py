"""torch.fx nodes that ONNX Runtime's QDQ quantizer treats specially, in torch terms:
activations it removes after a quantized op (ReLU, ReLU6 = Clip to [0, 6]) and zero pads whose
output keeps the input's scale. :mod:`.sharing` builds the simulated model's quantizers on them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _bounds(node: Any, lo_at: int, hi_at: int) -> tuple[Any, Any]:
    args = list(node.args) + [None] * 3
    kw = node.kwargs
    return (kw.get("min", kw.get("min_val", args[lo_at])),
            kw.get("max", kw.get("max_val", args[hi_at])))


def activation_mode(node: Any, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"`` / ``"relu6"`` when ``node`` is an activation ORT's QDQ quantizer removes after
    a quantized op (a Clip to [0, 6] is ReLU6: torchvision's and Keras' MobileNets; onnx2torch
    turns that Clip into ``nn.ReLU6``), else None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.ReLU6) or (isinstance(module, nn.Hardtanh)
                                            and (module.min_val, module.max_val) == (0.0, 6.0)):
            return "relu6"
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh or node.target in (torch.clamp, torch.clip):
            return "relu6" if _bounds(node, 1, 2) == (0, 6) else None
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return "relu"
        if node.target in ("clamp", "clip", "clamp_"):
            return "relu6" if _bounds(node, 1, 2) == (0, 6) else None
    return None


# ORT's QDQPad quantizes a zero-padded Pad's output with its input's scale (the range always
# holds 0): Keras' ZeroPadding2D before each stride-2 depthwise conv of MobileNetV2/EfficientNet.
# Without it the simulation quantized the padded tensor a second time, on its own (percentile)
# range.
_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d)


def zero_pad(node: Any, modules: dict[str, nn.Module]) -> bool:
    """``node`` pads with zeros (a module or ``F.pad``), so ORT keeps its input's scale."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return isinstance(module, _PADS) and float(module.value) == 0.0
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and not value
    return False


_IDENTITIES = (nn.Identity, nn.Dropout)


def past_identities(node: Any, modules: dict[str, nn.Module]) -> Any:
    """The last of a chain of Identity / Dropout modules that alone read ``node`` (``node``
    itself when there is none): ONNX has no node for them, so an activation after them
    follows ``node`` directly there (timm's RepVGG: Add, then Identity attention and drop
    path, then ReLU)."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op == "call_module" and isinstance(modules.get(user.target), _IDENTITIES) \
                and user.args and user.args[0] is node:
            node = user
            continue
        break
    return node
