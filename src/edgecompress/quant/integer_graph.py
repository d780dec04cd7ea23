"""The simulated model's fx graph routed through :mod:`.integer`'s kernels: each Add and global
average pooling between quantizers becomes QLinearAdd / QLinearGlobalAveragePool's arithmetic,
hard-swish and hard-sigmoid ONNX's order of float operations (ORT runs them in float between a
DequantizeLinear and a QuantizeLinear)."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .fakequant import ActQuant, QuantLayer
from .graph_ops import activation_mode, past_identities
from .integer import (integer_add, integer_add_relu, integer_mean, integer_mul, ort_hardsigmoid,
                      ort_hardswish, ort_logistic)

_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_SIGMOIDS = (torch.sigmoid, F.sigmoid, "sigmoid")
_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_POOL_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)


def _module(node: Any, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _quantizer_of(node: Any, modules: dict[str, nn.Module]) -> ActQuant | None:
    """The quantizer whose grid ``node``'s value lies on (an ActQuant call, or a layer that
    quantizes its output, seen through Identity / Dropout and the ReLU the layer fused)."""
    while True:
        module = _module(node, modules)
        if isinstance(module, (nn.Identity, nn.Dropout)) and node.args:
            node = node.args[0]
            continue
        if activation_mode(node, modules) is not None and node.args:
            inner = _module(node.args[0], modules)
            if isinstance(inner, QuantLayer) and inner.output == activation_mode(node, modules):
                node = node.args[0]
                continue
        break
    if node.op == "call_function" and node.target in _FUNCTIONS.values():
        module = modules.get(node.args[-1].target)  # an op already routed: its output quantizer
    if isinstance(module, ActQuant):
        return module
    if isinstance(module, QuantLayer) and module.act_out is not None:
        return module.act_out
    return None


def _is_add(node: Any, ops: Any = None) -> bool:
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    return node.op in ("call_function", "call_method") and node.target in (ops or _ADDS) \
        and len(node.args) == 2 and len(tensors) == 2 and not node.kwargs


def _is_global_pool(node: Any, modules: dict[str, nn.Module]) -> bool:
    module = _module(node, modules)
    if isinstance(module, _POOLS):
        size = module.output_size
        return all(v == 1 for v in (size if isinstance(size, tuple) else (size,)))
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS \
        and node.args[1:2] in ((1,), ((1, 1),), ((1, 1, 1),))


_HARD = {nn.Hardswish: ort_hardswish, nn.Hardsigmoid: ort_hardsigmoid,
         F.hardswish: ort_hardswish, F.hardsigmoid: ort_hardsigmoid}
_SILU = (nn.SiLU, F.silu)


def follow_onnx_activations(model: nn.Module, graph: Any) -> None:
    """Activations written as the ONNX ops ORT runs: hard-swish and hard-sigmoid in ONNX's order
    of float operations, SiLU as ``x * sigmoid(x)`` (torch's exporter writes Sigmoid and Mul,
    which ORT quantizes as QLinearSigmoid and QLinearMul: the sigmoid's output gets a quantizer
    of its own, as it does there)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for node in list(graph.nodes):
        module = _module(node, modules)
        kind = type(module) if module is not None else \
            node.target if node.op == "call_function" else None
        if not node.args or (kind not in _HARD and kind not in _SILU):
            continue
        with graph.inserting_before(node):
            if kind in _HARD:
                new = graph.call_function(_HARD[kind], (node.args[0],))
            else:
                gate = graph.call_function(torch.sigmoid, (node.args[0],))
                new = graph.call_function(operator.mul, (node.args[0], gate))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def use_integer_kernels(model: nn.Module, graph: Any) -> int:
    """Route each Add and global average pooling whose inputs and output are quantized through
    :func:`integer_add` / :func:`integer_mean` (QLinearAdd / QLinearGlobalAveragePool's
    arithmetic); how many were routed. A ReLU between the Add and its quantizer is the clamp
    at the grid's zero (ORT removes it the same way)."""
    modules = dict(model.named_modules(remove_duplicate=False))  # shared quantizers: every name
    names = {id(m): n for n, m in model.named_modules()}
    routed = 0
    _logistic_as_ort(graph, modules)
    for op in list(graph.nodes):
        if _is_add(op):
            args, fn = list(op.args), integer_add
        elif _is_add(op, _MULS):
            args, fn = list(op.args), integer_mul
        elif _is_global_pool(op, modules):
            args, fn = [op.args[0]], integer_mean
        else:
            continue
        last, out_q, relu = _output_quantizer(op, modules)
        quantizers = [_quantizer_of(a, modules) for a in args]
        if out_q is None or any(q is None for q in quantizers) or (relu and fn is not integer_add):
            continue
        with graph.inserting_before(last):
            refs = [graph.get_attr(names[id(q)]) for q in quantizers + [out_q]]
            fn_name = "integer_add_relu" if relu else fn.__name__
            reader = {"reader_quantizes": True} if last is not _quantizer_node(last, out_q,
                                                                               modules) else {}
            new = graph.call_function(_FUNCTIONS[fn_name], tuple(args) + tuple(refs), reader)
        chain = [last]
        while chain[-1] is not op:
            chain.append(chain[-1].args[0])
        last.replace_all_uses_with(new)
        for dead in chain:  # the quantizer (if a node of its own), the ReLU (if any), the op
            if not dead.users:
                graph.erase_node(dead)
        routed += 1
    return routed


def _logistic_as_ort(graph: Any, modules: dict[str, nn.Module]) -> None:
    """Every sigmoid computed with ORT's logistic approximation (after the quantizers were
    placed around it: they are found by the sigmoid op)."""
    for node in list(graph.nodes):
        sigmoid = isinstance(_module(node, modules), nn.Sigmoid) or \
            (node.op in ("call_function", "call_method") and node.target in _SIGMOIDS)
        if not sigmoid or not node.args or node.kwargs:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(ort_logistic, (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def _quantizer_node(node: Any, quantizer: Any, modules: dict[str, nn.Module]) -> Any:
    """``node`` when it is a call of ``quantizer`` itself, else None."""
    return node if _module(node, modules) is quantizer else None


def _output_quantizer(op: Any, modules: dict[str, nn.Module]) -> tuple[Any, Any, bool]:
    """(the last node the routed call replaces, the quantizer of ``op``'s output, a ReLU
    between them): an ActQuant call after ``op`` (or after its ReLU), or the input quantizer of
    the one layer reading it (that layer quantizes the already quantized value again, which
    changes nothing)."""
    node, relu = op, False
    ahead = past_identities(op, modules)
    if len(ahead.users) == 1:
        user = next(iter(ahead.users))
        if activation_mode(user, modules) == "relu" and user.args and user.args[0] is ahead:
            node, relu = user, True
    if len(node.users) != 1:
        return node, None, relu
    user = next(iter(node.users))
    module = _module(user, modules)
    if isinstance(module, ActQuant):
        return user, module, relu
    if isinstance(module, QuantLayer) and not module.input_quantized and not relu \
            and user.args and user.args[0] is node:
        return node, module.act_in, relu
    return node, None, relu


_FUNCTIONS = {"integer_add": integer_add, "integer_mean": integer_mean, "integer_mul": integer_mul,
              "integer_add_relu": integer_add_relu}
