"""Quantizer sharing: each tensor quantized once, where it is produced, as in ORT's graph.

ORT puts one QuantizeLinear on a tensor however many nodes read it (a residual sum read by the
next layer and by the identity shortcut), quantizes the inputs of the ops it runs in int8
(Add, Mul, pooling...) and reuses an input's scale through shape ops. :func:`share_quantizers`
rewrites the simulated model (with torch.fx) so it does the same.
"""

from __future__ import annotations

import copy
import logging
import operator
from typing import Any, Iterable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .fakequant import ActQuant, QuantLayer
from .graph_ops import activation_mode, past_identities, zero_pad
from .integer_graph import follow_onnx_activations, use_integer_kernels

log = logging.getLogger("edgecompress")

_PASS_THROUGH = (nn.Identity, nn.Dropout)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_relu(node: Any, modules: dict[str, nn.Module]) -> bool:
    """A ReLU or ReLU6 (see :func:`activation_mode`)."""
    return activation_mode(node, modules) is not None


def output_modes(model: nn.Module, layers: Iterable[str]) -> dict[str, str | None]:
    """How each layer's output is quantized in the QDQ graph (see :class:`QuantLayer`).

    Found with ``torch.fx``; a model fx cannot trace gets no output quantization (inputs
    only), which simulates ORT less closely — the export's parity check measures how much.
    """
    wanted = set(layers)
    modules = dict(model.named_modules())
    try:  # tracing can touch caches: a copy
        graph = _LayerLeaves(wanted).trace(copy.deepcopy(model))
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors
        return layer_output_modes(model, wanted)
    modes: dict[str, str | None] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        user = node
        while len(user.users) == 1:  # look through Identity (folded BN) and Dropout
            nxt = next(iter(user.users))
            if nxt.op == "call_module" and isinstance(modules.get(nxt.target), _PASS_THROUGH):
                user = nxt
                continue
            break
        users = list(user.users)
        if len(users) == 1 and users[0].op == "call_module" \
                and isinstance(modules.get(users[0].target), _BATCHNORMS):
            modes[node.target] = None
        elif len(users) == 1 and _is_relu(users[0], modules):
            modes[node.target] = activation_mode(users[0], modules)
        else:
            modes[node.target] = "plain"
    return modes


def layer_output_modes(model: nn.Module, layers: Iterable[str]) -> dict[str, str | None]:
    """Output modes when each layer is quantized on its own (fx cannot trace the model, or
    ``layers_only=True``): a Conv's output is quantized as it leaves the layer (before any
    ReLU; after its BatchNorm is folded, never before it), so ORT, told to quantize layers
    only (``export/onnx_scope.py``), runs it as QLinearConv; a Linear's output stays float
    (ORT: QGemm / MatMulIntegerToFloat, float out)."""
    from ..fold import batchnorm_pairs

    modules = dict(model.named_modules())
    # a Conv whose BatchNorm still follows (QAT before folding) is quantized after the fold,
    # on the tensor ORT sees: quantizing before the BN would train ranges of another tensor
    before_bn = {producer for producer, _ in batchnorm_pairs(model)}
    return {name: "plain" if isinstance(modules.get(name), nn.modules.conv._ConvNd)
            and name not in before_bn else None for name in layers}


class _LayerLeaves(torch.fx.Tracer):
    """Traces a float model keeping each layer to quantize whole: a subclass of nn.Linear with
    a forward of its own (timm's classifier ``Linear``) is otherwise traced through, and the
    layer got no output mode (its output was left unquantized while ORT quantizes it)."""

    def __init__(self, layers: set[str]):
        super().__init__()
        self.layers = layers

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.layers or \
            super().is_leaf_module(m, module_qualified_name)


class _LeafTracer(torch.fx.Tracer):
    """Traces the wrapped model, keeping QuantLayer and ActQuant calls whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (QuantLayer, ActQuant)) or super().is_leaf_module(m, module_qualified_name)


def _quant_layer(node: Any, modules: dict[str, nn.Module]) -> QuantLayer | None:
    module = modules.get(node.target) if node.op == "call_module" else None
    return module if isinstance(module, QuantLayer) else None


def _pass_through(node: Any, modules: dict[str, nn.Module]) -> Any:
    while node.op == "call_module" and isinstance(modules.get(node.target), _PASS_THROUGH):
        node = node.args[0]
    return node


# ops whose output ORT quantizes with its input's scale (export/ort_quant.py SAME_SCALE_OPS in
# torch terms):
# quantizing after them is quantizing before them
_SAME_SCALE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "permute",
                       "transpose", "contiguous"}
_SAME_SCALE_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                         torch.permute, torch.transpose, F.max_pool1d, F.max_pool2d, F.max_pool3d)
_SAME_SCALE_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _same_scale(node: Any, modules: dict[str, nn.Module], splits: bool = True) -> bool:
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if zero_pad(node, modules) or (splits and _is_split(node)):
        return True
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _SAME_SCALE_MODULES)
    if node.op == "call_method":
        return node.target in _SAME_SCALE_METHODS
    if node.op == "call_function" and node.target is operator.getitem:
        return splits and _is_split(node.args[0])  # one part of a chunk / split: ORT's Split keeps the scale
    return node.op == "call_function" and node.target in _SAME_SCALE_FUNCTIONS


def _is_split(node: Any) -> bool:
    """``torch.chunk`` / ``torch.split`` (or the methods): ShuffleNet's channel split, which ORT
    runs on the quantized tensor (its parts keep its scale)."""
    return (node.op == "call_method" and node.target in ("chunk", "split")) or \
        (node.op == "call_function" and node.target in (torch.chunk, torch.split))


def _source(node: Any, modules: dict[str, nn.Module], through_reshapes: int = 0) -> Any:
    """The node whose output tensor a layer reads: looks through no-op modules (a folded
    BatchNorm is an Identity), through a ReLU the producing QuantLayer already applied and,
    with ``through_reshapes``, through ops that keep their input's scale (Flatten, MaxPool…)."""
    while True:
        node = _pass_through(node, modules)
        if _is_relu(node, modules) and node.args:
            producer = _pass_through(node.args[0], modules)
            layer = _quant_layer(producer, modules)
            if layer is not None and layer.output == activation_mode(node, modules):
                return producer
        if not (through_reshapes and _same_scale(node, modules, through_reshapes >= 3)):
            return node
        node = node.args[0]


# torch ops whose output (and tensor inputs) ORT's quantizer quantizes as well: Add, Mul,
# Concat, Sigmoid, Softmax, LeakyRelu, GlobalAveragePool in its op registry
_QUANTIZED_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add,
                        torch.mul, torch.cat, torch.sigmoid, F.sigmoid, F.softmax,
                        torch.softmax, F.leaky_relu, F.adaptive_avg_pool1d,
                        F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_QUANTIZED_METHODS = {"add", "add_", "mul", "mul_", "sigmoid", "softmax"}
_QUANTIZED_MODULES = (nn.Sigmoid, nn.Softmax, nn.LeakyReLU, nn.AdaptiveAvgPool1d,
                      nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _is_softmax(node: Any, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.Softmax)
    return node.target in (F.softmax, torch.softmax, "softmax")


def _tensor_args(node: Any) -> list[Any]:
    args = [a for a in node.args if isinstance(a, torch.fx.Node)]
    for a in node.args:  # torch.cat's list of tensors
        if isinstance(a, (list, tuple)):
            args += [b for b in a if isinstance(b, torch.fx.Node)]
    return args


_SHAPE_METHODS = {"size", "dim", "numel"}


def _shape_value(node: Any) -> bool:
    """A number computed from tensor shapes (``x.size(0) * x.size(1)``), not a tensor."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    if node.op == "call_function" and node.target in (operator.getitem, operator.add,
                                                        operator.mul, operator.floordiv, len):
        return any(_shape_value(a) for a in node.args if isinstance(a, torch.fx.Node))
    return False


def _ort_quantized_op(node: Any, modules: dict[str, nn.Module]) -> bool:
    """An op ORT quantizes around (inputs and output), not a Conv/Linear layer. Adds and
    muls with a number (``x * 0.5``) are left out: ORT would quantize the constant too; so is
    arithmetic on shapes, which is not a tensor."""
    if node.op != "call_module" and _shape_value(node):
        return False
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            size = module.output_size
            return all(v == 1 for v in (size if isinstance(size, tuple) else (size,)))
        return isinstance(module, _QUANTIZED_MODULES)
    if node.op == "call_method":
        known = node.target in _QUANTIZED_METHODS
    elif node.op == "call_function":
        known = node.target in _QUANTIZED_FUNCTIONS
    else:
        return False
    if node.target in ("add", "add_", "mul", "mul_", operator.add, operator.iadd,
                       operator.mul, operator.imul, torch.add, torch.mul):
        return known and len(_tensor_args(node)) == 2
    if node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
        return known and node.args[1:2] in ((1,), ((1, 1),), ((1, 1, 1),))
    return known


# recipes record it: 1 = layers' tensors only (files saved before 2); 3 = SiLU as x·sigmoid(x)
# with the sigmoid quantized, a chunk / split keeping its input's quantizer, a ReLU after
# Identity modules fused (files saved before 3 rebuild with the quantizers they were saved with)
SHARING_VERSION = 3


def share_quantizers(model: nn.Module, version: int = SHARING_VERSION) -> tuple[nn.Module, int]:
    """Quantize each tensor once, where it is produced, as ORT's and TFLite's graphs do.

    Wrapping alone quantizes a layer's input inside the layer, so (a) a layer reading another
    layer's quantized output re-quantizes it on a second grid, and (b) a tensor that other ops
    read too (a residual block's input, read by the identity shortcut) reaches those ops in
    float. Here (a) the reader's input quantizer becomes the producer's output quantizer and
    (b) the readers' shared input quantizer is called right after the tensor is produced, so
    every op reads the quantized value — the model becomes a ``torch.fx.GraphModule``.
    From ``version`` 2 a reader looks through Flatten, MaxPool and other ops that keep their
    input's scale, and the tensors ORT quantizes around Add, Mul, Concat, Sigmoid, Softmax and
    global average pooling get quantizers of their own (``"<node>_q:out"``, calibrated like
    ORT's on the float model) — e.g. the last residual sum, read only by the pooling.

    Returns the model and the sharing version applied (0 when fx cannot trace it: the layers
    then quantize their own inputs, which the export's parity check measures).
    """
    try:  # a throwaway copy: tracing can leave proxies in a module's caches (timm LeViT)
        traced = copy.deepcopy(model)
        graph = _LeafTracer().trace(traced)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds of errors
        log.info("simulated INT8: torch.fx cannot trace %s (%s); each layer quantizes its own "
                 "input", type(model).__name__, str(exc)[:200])
        return model, 0
    work = copy.deepcopy(model)  # a surgery that fails half-way leaves ``model`` as it was
    _copy_tracer_constants(traced, work, graph)
    try:
        return _share(work, graph, version), version
    except Exception as exc:  # noqa: BLE001 - graph surgery on code fx traced oddly
        log.info("simulated INT8: cannot share quantizers in %s (%s: %s); each layer "
                 "quantizes its own input", type(model).__name__, type(exc).__name__,
                 str(exc)[:200])
        return model, 0


def _copy_tracer_constants(traced: nn.Module, work: nn.Module, graph: Any) -> None:
    """Give ``work`` the tensors fx stored on the traced copy (``_tensor_constant0``…: tensors
    a forward uses that are no parameter or buffer, e.g. in an onnx2torch module). Without
    them the GraphModule could not be built and a model converted from Keras or ONNX was
    simulated without shared quantizers: each layer re-quantized its input, residual sums
    were not quantized at all (keras.applications MobileNetV2)."""
    for node in graph.nodes:
        if node.op == "get_attr" and "." not in node.target and not hasattr(work, node.target):
            setattr(work, node.target, getattr(traced, node.target))


def _share(model: nn.Module, graph: Any, version: int) -> nn.Module:
    modules = dict(model.named_modules())
    through = version if version >= 2 else 0
    quantized: set[Any] = set()  # source nodes whose output is quantized once, where produced
    routed = 0
    if version >= 3:  # before the readers are found: SiLU's product is what a layer reads
        follow_onnx_activations(model, graph)
    for source, consumers in _readers(graph, modules, through).items():
        layers = [_quant_layer(c, modules) for c in consumers]
        producer = _quant_layer(source, modules)
        quantized.add(source)
        if producer is not None and producer.act_out is not None:
            shared = producer.act_out
        else:
            if len(consumers) == 1 and set(source.users) == set(consumers):
                continue  # its only reader: the layer's own input quantizer is the tensor's
            shared = layers[0].act_in
            _quantize_after(graph, source, f"{consumers[0].target}.act_in")
        for layer in layers:
            layer.act_in, layer.input_quantized = shared, True
    if through:
        _quantize_op_tensors(model, graph, modules, quantized, version)
        routed = use_integer_kernels(model, graph)
    if routed or any(n.op == "call_module" and isinstance(modules.get(n.target), ActQuant)
                     for n in graph.nodes):
        model = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    return model


def untraceable_parts(model: nn.Module, limit: int = 8, attempts: int = 64) -> list[str]:
    """The smallest submodules torch.fx cannot trace (``"blocks.2.attn: <reason>"``), at most
    ``limit`` of them after at most ``attempts`` traces: what a report names when the
    simulation cannot follow the whole graph."""
    found: list[str] = []
    budget = [attempts]

    def visit(name: str, module: nn.Module) -> bool:
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers have no forward
            return all([visit(f"{name}.{c}" if name else c, m)
                        for c, m in module.named_children()])
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        try:
            torch.fx.symbolic_trace(copy.deepcopy(module))
            return True
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds of errors
            if len(found) >= limit:
                return False
            children_ok = all([visit(f"{name}.{c}" if name else c, m)
                               for c, m in module.named_children()])
            if children_ok:
                found.append(f"{name or type(module).__name__}: {str(exc).splitlines()[0][:120]}")
            return False

    visit("", model)
    return found


def _is_quantized(node: Any, modules: dict[str, nn.Module]) -> bool:
    """A quantizer's output, or a layer's that quantizes its output itself."""
    module = modules.get(node.target) if node.op == "call_module" else None
    return isinstance(module, ActQuant) or (isinstance(module, QuantLayer)
                                            and module.act_out is not None)


def _quantize_op_tensors(model: nn.Module, graph: Any, modules: dict[str, nn.Module],
                         quantized: set[Any], version: int = SHARING_VERSION) -> None:
    """Give each tensor ORT quantizes around a non-layer op (see :func:`_ort_quantized_op`)
    and no quantizer holds yet a new :class:`ActQuant`, registered on ``model``."""
    for node in list(graph.nodes):
        if not _ort_quantized_op(node, modules):
            continue
        out = past_identities(node, modules) if version >= 3 else node
        if len(out.users) == 1 and _is_relu(next(iter(out.users)), modules):
            out = next(iter(out.users))  # ORT drops the ReLU and quantizes to its range
        else:
            out = node
        for tensor in [_source(a, modules, version) for a in _tensor_args(node)] + [out]:
            if tensor in quantized or _is_quantized(tensor, modules):
                continue
            quantized.add(tensor)
            name = f"{tensor.name}_q"
            softmax_out = tensor is out and _is_softmax(node, modules)
            model.add_module(name, ActQuant(fixed=(0.0, 1.0) if softmax_out else None))
            modules[name] = getattr(model, name)
            _quantize_after(graph, tensor, name)


def _readers(graph: Any, modules: dict[str, nn.Module],
             through_reshapes: int = 0) -> dict[Any, list[Any]]:
    """Source node → the QuantLayer calls reading its tensor. A layer called more than once
    (shared weights) keeps quantizing its own inputs: one quantizer cannot serve two tensors."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if _quant_layer(node, modules) is not None:
            calls[node.target] = calls.get(node.target, 0) + 1
    readers: dict[Any, list[Any]] = {}
    for node in graph.nodes:
        if _quant_layer(node, modules) is None or calls[node.target] > 1 or not node.args \
                or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = _source(node.args[0], modules, through_reshapes)
        if _quant_layer(source, modules) is not None and calls[source.target] > 1:
            source = node.args[0]
        readers.setdefault(source, []).append(node)
    return readers


def _quantize_after(graph: Any, source: Any, quantizer: str) -> None:
    """Insert a call of ``quantizer`` on ``source``'s output; every reader then reads that."""
    anchor = source
    if source.op == "placeholder":  # placeholders stay first: insert after the last one
        anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(anchor):
        quantized = graph.call_module(quantizer, (source,))
    source.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
