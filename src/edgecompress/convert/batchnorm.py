"""Keep BatchNorm trainable through a conversion (``batchnorm="keep"``).

Exporters write an inference BatchNorm as ``Mul`` + ``Add`` by per-channel constants after the
convolution (tf2onnx does for every Keras BatchNorm). Folded into the convolution, pruning and
PTQ work, but training then has no BatchNorm. Kept, the pair becomes a ``BatchNormalization``
node (mean 0, variance 1 − ε: exactly ``x · scale + shift``), ONNX Runtime is told not to fold
it, and after onnx2torch each ``nn.BatchNorm2d`` gets running statistics measured on the
samples, with scale and shift rewritten so its eval-mode output is unchanged (train mode then
normalises with batch statistics close to these).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

EPS = 1e-5


def mul_add_to_batchnorm(proto: Any) -> int:
    """Rewrite ``Conv → Mul(c) → Add(d)`` with per-channel constants as Conv → BatchNorm."""
    from onnx import helper, numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    users: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    changed = 0
    for conv in [n for n in proto.graph.node if n.op_type == "Conv"]:
        mul = _only_user(users, conv.output[0], "Mul")
        add = _only_user(users, mul.output[0], "Add") if mul is not None else None
        if add is None:
            continue
        scale = _const_operand(mul, conv.output[0], consts)
        shift = _const_operand(add, mul.output[0], consts)
        if scale is None or shift is None or scale.size != shift.size:
            continue
        c = scale.size
        name = f"{mul.name or conv.output[0]}_ec_bn"
        inits = {f"{name}.scale": scale, f"{name}.bias": shift,
                 f"{name}.mean": np.zeros(c, np.float32),
                 f"{name}.var": np.full(c, 1 - EPS, np.float32)}
        proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
        bn = helper.make_node("BatchNormalization", [conv.output[0], *inits], list(add.output),
                              name=name, epsilon=EPS)
        idx = list(proto.graph.node).index(mul)
        proto.graph.node.remove(mul)
        proto.graph.node.remove(add)
        proto.graph.node.insert(idx, bn)
        changed += 1
    return changed


def _only_user(users: dict[str, list[Any]], tensor: str, op: str) -> Any:
    found = users.get(tensor, [])
    return found[0] if len(found) == 1 and found[0].op_type == op else None


def _const_operand(node: Any, other: str, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    names = [i for i in node.input if i != other]
    if len(names) != 1 or names[0] not in consts:
        return None
    value = consts[names[0]]
    ok = value.ndim == 1 or (value.ndim in (3, 4) and value.shape[-2:] == (1, 1))
    return value.reshape(-1).astype(np.float32) if ok and value.size > 1 else None


def restore_statistics(module: nn.Module, inputs: list[np.ndarray]) -> int:
    """Give every BatchNorm2d of ``module`` running statistics measured on ``inputs`` while
    keeping its eval-mode output (weight and bias are rewritten to match). Returns the count."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], _out: Any) -> None:
        x = args[0].detach().double()
        stats[mod] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    handles = [bn.register_forward_hook(hook) for bn in bns]
    try:
        with torch.no_grad():
            module.eval()(*(torch.from_numpy(x) for x in inputs))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for bn in bns:
            mean, var = stats[bn]
            s0 = torch.sqrt(bn.running_var.double() + bn.eps)
            s = torch.sqrt(var + bn.eps)
            w0, b0, m0 = bn.weight.double(), bn.bias.double(), bn.running_mean.double()
            bn.weight.copy_((w0 * s / s0).float())
            bn.bias.copy_((b0 - m0 * w0 / s0 + mean * w0 / s0).float())
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
    return len(bns)
