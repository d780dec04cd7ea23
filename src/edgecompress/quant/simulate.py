"""Fake-quantized torch models that simulate ONNX Runtime's QDQ INT8 numerics.

Each quantized layer (Conv1d/2d/3d, Linear) is wrapped in :class:`QuantLayer`: its input and
output go through :class:`ActQuant` (per-tensor asymmetric 8-bit, scale and zero point computed
as ORT's ``compute_scale_zp`` does; a ReLU consuming the output is fused as ORT fuses it) and
its weight is fake-quantized symmetric int8 in [-127, 127], per output channel or per tensor;
its bias is rounded to int32 at input scale × weight scale. Those are the tensors ORT's QDQ
graph quantizes around its integer kernels. :func:`share_quantizers` then makes each tensor
quantized once, where it is produced, as in ORT's graph (a residual sum, read by the next
layer and by the identity shortcut, included).
The wrapped model keeps plain tensors only (weights plus range buffers),
so it is rebuilt from the float model and its state dict (:func:`rebuild`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import operator
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

log = logging.getLogger("edgecompress")

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ACT_QMIN, ACT_QMAX = -128, 127  # asymmetric 8-bit: u8 and s8 give the same grid (zp shifts by 128)
W_QMAX = 127  # symmetric int8 weights in [-127, 127], as ORT's QDQ quantizer writes them
W_QMAX_REDUCED = 64  # ORT's reduce_range: 7-bit weights in [-64, 64] (x86 CPUs without VNNI)
# older torch (before 2.6) lacks it: there a simulated INT8 model exports with a batch of 1 only
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def act_qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an asymmetric 8-bit range, as ONNX Runtime computes them."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / float(ACT_QMAX - ACT_QMIN)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(ACT_QMIN - lo / scale).clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)
    return scale.float(), zero_point


def weight_scale(w: torch.Tensor, per_channel: bool, qmax: int = W_QMAX) -> torch.Tensor:
    """Scale of symmetric int8 weights, max|w| / qmax as ORT computes it: one per output
    channel, or a single-element tensor."""
    if per_channel:
        absmax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    else:
        absmax = w.detach().abs().max().reshape(1)
    return torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax)).float()


def fake_quant_weight(w: torch.Tensor, per_channel: bool, qmax: int = W_QMAX,
                      scale: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric fake quantization of a weight to [-qmax, qmax] (gradients pass straight
    through); ``scale`` is :func:`weight_scale`'s, computed here when not given."""
    if scale is None:
        scale = weight_scale(w, per_channel, qmax)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    if per_channel:
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -qmax, qmax)
    return torch.fake_quantize_per_tensor_affine(w, scale, zp, -qmax, qmax)


def fake_quant_bias(b: torch.Tensor, input_scale: torch.Tensor,
                    w_scale: torch.Tensor) -> torch.Tensor:
    """The bias as the integer kernels add it: int32 at scale input scale × weight scale (ORT
    and TFLite both store it so), rounded half to even; gradients pass straight through.
    The rounding is tiny, but in a deep network a value a hair from a rounding boundary of
    the next quantizer lands on the other side, and such flips grow layer by layer."""
    scale = input_scale * w_scale
    return b + (torch.round(b / scale) * scale - b).detach()


def fake_quant_plain(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine``'s forward in plain ops, bit for bit (its CPU
    kernel multiplies by the float32 ``1 / scale`` and rounds half to even), which torch.export
    traces with a dynamic batch. No straight-through gradient: for inference graphs only."""
    zp = zp.to(x.dtype)
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, ACT_QMIN, ACT_QMAX)
    return (q - zp) * scale


class ActQuant(nn.Module):
    """Per-tensor asymmetric 8-bit fake quantization with a calibrated (or trained) range.

    ``lo``/``hi`` are buffers, so the range is saved with the weights; ``ready`` is a plain
    flag (not a tensor) so the forward has no data-dependent branch and ``torch.export``
    captures it. While ``observing``
    (quantization-aware training) the range follows an exponential moving average of each
    training batch's min/max, as torch's MovingAverageMinMaxObserver does.
    """

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.momentum = momentum
        self.observing = False
        self.ready = False

    def set_range(self, lo: float, hi: float) -> None:
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        self.ready = True

    def range(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if self.ready:
                    lo = self.lo + self.momentum * (lo - self.lo)
                    hi = self.hi + self.momentum * (hi - self.hi)
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.ready = True
        if not self.ready:
            return x
        scale, zp = act_qparams(self.lo, self.hi)
        if _is_exporting():
            # torch.export has no shape rule for fake_quantize with tensor qparams, so it could
            # only export a batch of 1 (saved .ecm programs then rejected larger batches)
            return fake_quant_plain(x, scale, zp)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zp.reshape(1),
                                                     ACT_QMIN, ACT_QMAX)

    def extra_repr(self) -> str:
        return f"range=({float(self.lo):.4g}, {float(self.hi):.4g})"


class QuantLayer(nn.Module):
    """A Conv or Linear layer computing with 8-bit inputs and int8 weights (simulated).

    ``output`` says how ORT's QDQ graph quantizes the layer's output: ``"relu"`` when a ReLU
    is its only consumer (ORT drops the ReLU and quantizes to its range, so the ReLU is applied
    here before quantizing; the model's own ReLU after it then changes nothing), ``"plain"``
    otherwise, ``None`` when a BatchNorm still follows (quantization-aware training before
    folding).
    """

    def __init__(self, layer: nn.Module, per_channel: bool = True, output: str | None = None,
                 weight_qmax: int = W_QMAX):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise ConfigError(f"QuantLayer wraps Conv1d/2d/3d or Linear, not {type(layer).__name__}")
        self.layer = layer
        self.act_in = ActQuant()
        self.act_out = ActQuant() if output else None
        self.output = output
        self.per_channel = per_channel
        self.weight_qmax = weight_qmax
        # set by share_quantizers: act_in is the producer's quantizer, already applied upstream
        self.input_quantized = False
        self.float_weights = False  # set by float_numerics (calibration)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_quantized:
            x = self.act_in(x)
        y = self.layer(x) if self.float_weights else self._int8_layer(x)
        if self.act_out is None:
            return y
        return self.act_out(F.relu(y) if self.output == "relu" else y)

    def _int8_layer(self, x: torch.Tensor) -> torch.Tensor:
        w_scale = weight_scale(self.layer.weight, self.per_channel, self.weight_qmax)
        w = fake_quant_weight(self.layer.weight, self.per_channel, self.weight_qmax, w_scale)
        b = self.layer.bias
        if b is not None and self.act_in.ready:
            b = fake_quant_bias(b, act_qparams(self.act_in.lo, self.act_in.hi)[0], w_scale)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)


@contextlib.contextmanager
def float_numerics(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as the float model it simulates: float weights, no activation quantizer.

    ORT calibrates every tensor on the float graph. Calibrating with int8 weights (or with
    upstream activations already quantized) moves each range a little, and a range a little
    off puts values on a different rounding grid from ORT's."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant)]
    ready = [q.ready for q in quantizers]
    for layer in layers:
        layer.float_weights = True
    for q in quantizers:
        q.ready = False
    try:
        yield
    finally:
        for layer in layers:
            layer.float_weights = False
        for q, was in zip(quantizers, ready):
            q.ready = was


_PASS_THROUGH = (nn.Identity, nn.Dropout)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_relu(node: Any, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def output_modes(model: nn.Module, layers: Iterable[str]) -> dict[str, str | None]:
    """How each layer's output is quantized in the QDQ graph (see :class:`QuantLayer`).

    Found with ``torch.fx``; a model fx cannot trace gets no output quantization (inputs
    only), which simulates ORT less closely — the export's parity check measures how much.
    """
    wanted = set(layers)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors
        return {name: None for name in wanted}
    modules = dict(model.named_modules())
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
            modes[node.target] = "relu"
        else:
            modes[node.target] = "plain"
    return modes


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


# ops whose output ORT quantizes with its input's scale (the ONNX exporter's _SAME_AS_INPUT):
# quantizing after them is quantizing before them
_SAME_SCALE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "permute",
                       "transpose", "contiguous"}
_SAME_SCALE_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                         torch.permute, torch.transpose, F.max_pool1d, F.max_pool2d, F.max_pool3d)
_SAME_SCALE_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _same_scale(node: Any, modules: dict[str, nn.Module]) -> bool:
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _SAME_SCALE_MODULES)
    if node.op == "call_method":
        return node.target in _SAME_SCALE_METHODS
    return node.op == "call_function" and node.target in _SAME_SCALE_FUNCTIONS


def _source(node: Any, modules: dict[str, nn.Module], through_reshapes: bool = False) -> Any:
    """The node whose output tensor a layer reads: looks through no-op modules (a folded
    BatchNorm is an Identity), through a ReLU the producing QuantLayer already applied and,
    with ``through_reshapes``, through ops that keep their input's scale (Flatten, MaxPool…)."""
    while True:
        node = _pass_through(node, modules)
        if _is_relu(node, modules) and node.args:
            producer = _pass_through(node.args[0], modules)
            layer = _quant_layer(producer, modules)
            if layer is not None and layer.output == "relu":
                return producer
        if not (through_reshapes and _same_scale(node, modules)):
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


SHARING_VERSION = 2  # recipes record it: 1 = layers' tensors only (files saved before 2)


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
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds of errors
        log.info("simulated INT8: torch.fx cannot trace %s (%s); each layer quantizes its own "
                 "input", type(model).__name__, str(exc)[:200])
        return model, 0
    modules = dict(model.named_modules())
    through = version >= 2
    quantized: set[Any] = set()  # source nodes whose output is quantized once, where produced
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
        _quantize_op_tensors(model, graph, modules, quantized)
    if any(n.op == "call_module" and isinstance(modules.get(n.target), ActQuant)
           for n in graph.nodes):
        model = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    return model, version


def _is_quantized(node: Any, modules: dict[str, nn.Module]) -> bool:
    """A quantizer's output, or a layer's that quantizes its output itself."""
    module = modules.get(node.target) if node.op == "call_module" else None
    return isinstance(module, ActQuant) or (isinstance(module, QuantLayer)
                                            and module.act_out is not None)


def _quantize_op_tensors(model: nn.Module, graph: Any, modules: dict[str, nn.Module],
                         quantized: set[Any]) -> None:
    """Give each tensor ORT quantizes around a non-layer op (see :func:`_ort_quantized_op`)
    and no quantizer holds yet a new :class:`ActQuant`, registered on ``model``."""
    for node in list(graph.nodes):
        if not _ort_quantized_op(node, modules):
            continue
        out = node
        if len(node.users) == 1 and _is_relu(next(iter(node.users)), modules):
            out = next(iter(node.users))  # ORT drops the ReLU and quantizes to its range
        for tensor in [_source(a, modules, True) for a in _tensor_args(node)] + [out]:
            if tensor in quantized or _is_quantized(tensor, modules):
                continue
            quantized.add(tensor)
            name = f"{tensor.name}_q"
            model.add_module(name, ActQuant())
            modules[name] = getattr(model, name)
            _quantize_after(graph, tensor, name)


def _readers(graph: Any, modules: dict[str, nn.Module],
             through_reshapes: bool = False) -> dict[Any, list[Any]]:
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


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has a VNNI dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear layers a static recipe can quantize, by name (attention internals excluded:
    ``nn.MultiheadAttention`` reads its projection weights directly, not through the module)."""
    inside_mha = {f"{n}.{c}" for n, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_modules() if c}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and n and n not in inside_mha}


def resolve_skip(model: nn.Module, skip: Iterable[str], candidates: dict[str, Any]) -> set[str]:
    """Layer names that ``skip`` keeps in float; ConfigError for names that match no layer.

    A skip entry is a module name; a container's name keeps every quantizable layer inside it.
    """
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for entry in skip:
        hits = {n for n in candidates if n == entry or n.startswith(entry + ".")}
        if not hits:
            if entry in modules:
                raise ConfigError(f"skip={entry!r} names a {type(modules[entry]).__name__}, which "
                                  f"holds no quantizable layer (Conv or Linear); quantizable "
                                  f"layers: {_listing(candidates)}")
            raise ConfigError(f"skip={entry!r} is not a layer of {type(model).__name__}; "
                              f"quantizable layers: {_listing(candidates)}")
        chosen |= hits
    return chosen


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    more = f" … (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def wrap(model: nn.Module, per_channel: bool, skip: set[str],
         outputs: dict[str, str | None] | None = None, weight_qmax: int = W_QMAX) -> nn.Module:
    """Wrap every quantizable layer not in ``skip`` in a :class:`QuantLayer` (in place).

    ``outputs`` (layer → output mode) defaults to what :func:`output_modes` finds.
    """
    layers = {n: m for n, m in quantizable_layers(model).items() if n not in skip}
    if outputs is None:
        outputs = output_modes(model, layers)
    for name, layer in layers.items():
        _set_child(model, name, QuantLayer(layer, per_channel, outputs.get(name), weight_qmax))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """A float copy: every :class:`QuantLayer` replaced by the layer it wraps."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLayer):
            _set_child(model, name, module.layer)
    return model


def act_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    """``"<layer>:in"`` / ``"<layer>:out"`` → the quantizer of that layer's input / output;
    ``"<node>_q:out"`` → a quantizer :func:`share_quantizers` put after a non-layer op."""
    found: dict[str, ActQuant] = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantLayer):
            found[f"{n}:in"] = m.act_in
            if m.act_out is not None:
                found[f"{n}:out"] = m.act_out
    held = {id(q) for q in found.values()}
    for n, m in model.named_modules():
        if isinstance(m, ActQuant) and id(m) not in held:
            found[f"{n}:out"] = m
    return found


def ranges_of(model: nn.Module) -> dict[str, list[float]]:
    """``"<layer>:in"`` / ``"<layer>:out"`` → [lo, hi] (plain data for the recipe)."""
    return {n: list(q.range()) for n, q in act_quantizers(model).items() if q.ready}


def set_ranges(model: nn.Module, ranges: dict[str, list[float] | tuple[float, float]]) -> None:
    """Set the quantizers named in ``ranges``; one shared by several names (see
    :func:`share_quantizers`) gets the union of their ranges, as ORT merges them."""
    merged: dict[int, tuple[float, float]] = {}
    for name, q in act_quantizers(model).items():
        if name not in ranges:
            continue
        lo, hi = ranges[name]
        if id(q) in merged:
            lo, hi = min(lo, merged[id(q)][0]), max(hi, merged[id(q)][1])
        merged[id(q)] = (lo, hi)
        q.set_range(lo, hi)


def set_observing(model: nn.Module, on: bool) -> None:
    for q in act_quantizers(model).values():
        q.observing = on


def build_simulated(float_model: nn.Module, recipe: "QuantRecipe") -> nn.Module:
    """The simulated model of ``recipe`` on a copy of ``float_model``, ranges from the recipe."""
    model = wrap(copy.deepcopy(float_model).eval(), recipe.per_channel,
                 set(recipe.extra.get("skipped_layers", ())), recipe.extra.get("outputs"),
                 int(recipe.extra.get("weight_qmax", W_QMAX)))
    version = int(recipe.extra.get("one_quantizer_per_tensor") or 0)  # True in recipes of v1
    if version:  # recipes before it: each layer quantizes its own input
        model, _ = share_quantizers(model, version)
    set_ranges(model, recipe.ranges)
    return model.eval()


def rebuild(float_model: nn.Module, recipe: "QuantRecipe", weights: dict[str, Any]) -> nn.Module:
    """Rebuild a saved simulated model (``DeployableModel.load`` calls this through the recipe)."""
    if recipe.scheme == "dynamic":
        from .dynamic import quantize_dynamic_torch

        return quantize_dynamic_torch(float_model, recipe.layers, set(recipe.skip))
    model = build_simulated(float_model, recipe)
    model.load_state_dict(weights, strict=True)
    return model.eval()
