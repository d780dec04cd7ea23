"""Fake-quantization primitives that compute what ONNX Runtime's QDQ INT8 graph computes.

:class:`ActQuant` quantizes a tensor per-tensor asymmetric 8-bit (scale and zero point as
ORT's ``compute_scale_zp``); :class:`QuantLayer` wraps a Conv/Linear: its weight fake-quantized
symmetric int8 per output channel or per tensor, its bias rounded to int32 at input scale ×
weight scale, its input and output through ActQuant (a ReLU consuming the output fused, as ORT
fuses it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .integer import integer_layer, layer_applies
from .qparams import (ACT_QMAX, ACT_QMIN, W_QMAX, W_QMAX_REDUCED, act_qparams,  # noqa: F401
                      weight_scale)

log = logging.getLogger("edgecompress")


QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# activations ORT's QDQ quantizer removes after a quantized op (its QDQRemovableActivation: Relu
# and Clip), quantizing the op's output to the activation's range instead; TFLite fuses the same
# two (RELU, RELU6). Output mode -> the function applied before the output quantizer.
FUSED_ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6}
# older torch (before 2.6) lacks it: there a simulated INT8 model exports with a batch of 1 only
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


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


def quantize_divide(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear as ONNX Runtime computes it, ``x / scale`` rounded half to even (torch's
    fake quantization multiplies by ``1 / scale``, one float32 rounding apart: a value on a
    rounding boundary lands on the other side), then dequantized."""
    zp = zp.to(x.dtype)
    q = torch.clamp(torch.round(x / scale) + zp, ACT_QMIN, ACT_QMAX)
    return (q - zp) * scale


MASK_FILL = 1e30  # |x| beyond it is a mask fill (HF fills masked scores with finfo.min), not data


def observed_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Min and max of ``x``'s finite values below :data:`MASK_FILL` (None when none is): an
    attention mask's -inf must not stretch a range to infinity."""
    x = x.detach().float()
    keep = x.abs() < MASK_FILL
    if not bool(keep.all()):
        x = x[keep]
        if x.numel() == 0:
            return None
    return x.min(), x.max()


class ActQuant(nn.Module):
    """Per-tensor asymmetric 8-bit fake quantization with a calibrated (or trained) range.

    ``lo``/``hi`` are buffers, so the range is saved with the weights; ``ready`` is a plain
    flag (not a tensor) so the forward has no data-dependent branch and ``torch.export``
    captures it. While ``observing``
    (quantization-aware training) the range follows an exponential moving average of each
    training batch's min/max, as torch's MovingAverageMinMaxObserver does.
    """

    def __init__(self, momentum: float = 0.01, fixed: tuple[float, float] | None = None):
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.momentum = momentum
        self.observing = False
        self.ready = False
        # a range ORT fixes whatever calibration sees: [0, 1] for a Softmax output
        # (onnxruntime.quantization's adjust_tensor_ranges)
        self.fixed = fixed

    def set_range(self, lo: float, hi: float) -> None:
        if self.fixed is not None:
            lo, hi = self.fixed
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        self.ready = True

    def range(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # indices, masks: ORT quantizes float tensors only
            return x
        if self.observing and self.training:
            self._observe(x)
        if not self.ready:
            return x
        return self._quantize(x)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        seen = observed_range(x)
        if seen is None:  # nothing finite in this batch: the range stays as it is
            return
        lo, hi = seen
        if self.fixed is not None:
            lo, hi = (torch.tensor(v) for v in self.fixed)
        elif self.ready:
            lo = self.lo + self.momentum * (lo - self.lo)
            hi = self.hi + self.momentum * (hi - self.hi)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.ready = True

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale, zp = act_qparams(self.lo, self.hi)
        if not self.training:  # ORT's QuantizeLinear divides by the scale (MLAS, x86 and ARM)
            return quantize_divide(x, scale, zp)
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

    ``output`` says how ORT's QDQ graph quantizes the layer's output: ``"relu"`` (``"relu6"``)
    when a ReLU (ReLU6, a Clip to [0, 6]) is its only consumer (ORT drops the activation and
    quantizes to its range, so it is applied here before quantizing; the model's own activation
    after it then changes nothing), ``"plain"``
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

    def __getattr__(self, name: str) -> Any:
        """The wrapped layer's attributes (``weight``, ``bias``, ``in_features``,
        ``kernel_size``...), which model code reads in its forward (HF ViT reads
        ``projection.weight.dtype``, timm EdgeNeXt a layer's weight): the float values, as the
        float model has them."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__["_modules"].get("layer")
            if layer is None or name.startswith("_"):
                raise
            return getattr(layer, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_quantized:
            x = self.act_in(x)
        if layer_applies(self):  # eval: QLinearConv / QGemm's own arithmetic
            return integer_layer(self, x)
        y = self.layer(x) if self.float_weights else self._int8_layer(x)
        if self.act_out is None:
            return y
        return self.act_out(fused_activation(y, self.output))

    def _int8_layer(self, x: torch.Tensor) -> torch.Tensor:
        w_scale = weight_scale(self.layer.weight, self.per_channel, self.weight_qmax)
        w = fake_quant_weight(self.layer.weight, self.per_channel, self.weight_qmax, w_scale)
        b = self.layer.bias
        if b is not None and self.act_in.ready:
            b = fake_quant_bias(b, act_qparams(self.act_in.lo, self.act_in.hi)[0], w_scale)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)


def fused_activation(y: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``y`` through the activation output mode ``mode`` fuses (unchanged for "plain")."""
    fn = FUSED_ACTIVATIONS.get(mode or "")
    return fn(y) if fn is not None else y


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
