"""The simulated INT8 model computing what ONNX Runtime's integer kernels compute, bit for bit.

A QDQ file is run by ORT as QLinearConv / QGemm / QLinearAdd / QLinearGlobalAveragePool (its
default optimisation fuses each DequantizeLinear → op → QuantizeLinear). Those kernels do not
compute the float graph the QDQ nodes describe: a convolution accumulates exact int32 products
and requantizes with one float32 multiplier, ``round(float(acc) * (s_in * s_w / s_out))``; an
Add computes ``round(a·(s_a/s_c) + b·(s_b/s_c) + zp terms)`` with two fused multiply-adds on the
raw u8 values; the pooling divides an int32 sum. The float simulation (fake quantization around
float ops) lands on the other side of a rounding boundary for a few values per layer; in a
network that amplifies small perturbations (measured: a random-init MobileNetV2, where a 1-step
flip in 1e-5 of the first layer's values grows to 26 steps at the logits) the two never agree
within the parity bound — and ORT's own two executions of the same file differ as much. In
eval mode the simulated model therefore follows the integer kernels' arithmetic exactly
(integer sums in float64, the requantization in float32 as MLAS does it); training (QAT) keeps
the differentiable fake quantization.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .qparams import ACT_QMAX, ACT_QMIN, act_qparams, weight_scale

# quantizers and layers are fakequant's ActQuant / QuantLayer (not imported: fakequant
# imports this module)
Quantizer = Any
Layer = Any

U8_OFFSET = 128  # our activation grid is s8 [-128, 127]; ORT's x86 tensors are u8 (zp + 128)


def _ready(*quantizers: Quantizer | None) -> bool:
    return all(q is not None and q.ready and not q.training and q.fixed is None
               for q in quantizers)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """MLAS' requantization of an exact integer accumulator: float32(acc) × multiplier (float32),
    clamped to the grid, rounded half to even, plus the zero point; returns ``q - zp``."""
    v = acc.float() * multiplier
    lo, hi = float(ACT_QMIN) - zp.float(), float(ACT_QMAX) - zp.float()
    return torch.round(torch.minimum(torch.maximum(v, lo), hi))


def integers(x: torch.Tensor, q: Quantizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q - zp`` of a tensor ``q`` has already quantized (exact: x is (q - zp) × scale), as
    float64, with that quantizer's scale and zero point."""
    scale, zp = act_qparams(q.lo, q.hi)
    return torch.round(x.double() / scale.double()), scale, zp


def layer_applies(layer: Layer) -> bool:
    """A layer whose output ORT's kernel requantizes itself (QLinearConv, QGemm)."""
    return (not layer.training and not layer.float_weights and layer.output is not None
            and _ready(layer.act_in, layer.act_out))


def integer_layer(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """QLinearConv / QGemm: int32 accumulation of (x - zp_x) · w_q plus the int32 bias, then
    requantized per output channel with float32 ``(s_x · s_w) / s_y`` (ORT's order)."""
    inner = layer.layer
    xi, s_in, _ = integers(x, layer.act_in)
    w_scale = weight_scale(inner.weight, layer.per_channel, layer.weight_qmax)
    shape = (-1,) + (1,) * (inner.weight.dim() - 1)
    wi = torch.clamp(torch.round(inner.weight.detach() / w_scale.reshape(shape)),
                     -layer.weight_qmax, layer.weight_qmax).double()
    bias = None
    if inner.bias is not None:
        bias = torch.round(inner.bias.detach() / (s_in * w_scale)).double()
    if isinstance(inner, nn.Linear):
        acc = F.linear(xi, wi, bias)
        channel_shape: tuple[int, ...] = (-1,)
    else:
        acc = inner._conv_forward(xi, wi, bias)
        channel_shape = (-1,) + (1,) * (acc.dim() - 2)
    s_out, zp_out = act_qparams(layer.act_out.lo, layer.act_out.hi)
    multiplier = ((s_in * w_scale) / s_out).reshape(channel_shape)
    return (requantize(acc, multiplier, zp_out) * s_out).to(x.dtype)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add: the product of two float32 is exact in float64, and so is
    the sum at the magnitudes of 8-bit values, so one rounding to float32 remains."""
    return (a.double() * b.double() + c.double()).float()


def integer_add(a: torch.Tensor, b: torch.Tensor, qa: Quantizer, qb: Quantizer,
                qc: Quantizer, reader_quantizes: bool = False) -> torch.Tensor:
    """QLinearAdd as MLAS' AVX2 kernel computes it on the raw u8 values (``reader_quantizes``:
    ``qc`` is the input quantizer of the one layer reading the sum, which applies it itself):
    ``round(fma(a, s_a/s_c, fma(b, s_b/s_c, zp_c - (s_a/s_c·zp_a + s_b/s_c·zp_b))))``."""
    if not _ready(qa, qb, qc):
        return a + b if reader_quantizes else qc(a + b)
    ai, sa, za = integers(a, qa)
    bi, sb, zb = integers(b, qb)
    sc, zc = act_qparams(qc.lo, qc.hi)
    ua, ub = (ai + za.double() + U8_OFFSET).float(), (bi + zb.double() + U8_OFFSET).float()
    za_u, zb_u, zc_u = (z.float() + U8_OFFSET for z in (za, zb, zc))
    ra, rb = sa / sc, sb / sc
    fixed = zc_u - _fma(ra, za_u, rb * zb_u)
    v = torch.round(_fma(ua, ra, _fma(ub, rb, fixed)))
    q = torch.clamp(v, 0.0, 255.0) - U8_OFFSET  # packs/packus saturate to u8
    return ((q - zc.float()) * sc).to(a.dtype)


def integer_mean(x: torch.Tensor, qx: Quantizer, qy: Quantizer,
                 reader_quantizes: bool = False) -> torch.Tensor:
    """QLinearGlobalAveragePool: the int32 sum of ``x - zp_x`` over the spatial dimensions,
    requantized with float32 ``s_x / (s_y · n)``."""
    if not _ready(qx, qy):
        mean = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        return mean if reader_quantizes else qy(mean)
    xi, sx, _ = integers(x, qx)
    n = 1
    for size in x.shape[2:]:
        n *= int(size)
    acc = xi.sum(dim=tuple(range(2, x.dim())), keepdim=True)
    sy, zy = act_qparams(qy.lo, qy.hi)
    multiplier = sx / (sy * float(n))
    return (requantize(acc, multiplier, zy) * sy).to(x.dtype)


def integer_add_relu(a: torch.Tensor, b: torch.Tensor, qa: Quantizer, qb: Quantizer,
                     qc: Quantizer) -> torch.Tensor:
    """Add → ReLU → quantize: QLinearAdd onto a grid starting at 0, whose clamp is the ReLU."""
    if not _ready(qa, qb, qc):
        return qc(F.relu(a + b))
    return integer_add(a, b, qa, qb, qc)


_SIXTH = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))  # HardSigmoid's alpha, float32


def ort_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """HardSigmoid as ONNX defines it and ORT computes it, ``clamp(x · (1/6) + 0.5, 0, 1)``
    (torch: ``relu6(x + 3) / 6``, one float32 rounding apart)."""
    return torch.clamp(x * _SIXTH + 0.5, 0.0, 1.0)


def ort_hardswish(x: torch.Tensor) -> torch.Tensor:
    """HardSwish as ORT runs it: the ONNX function ``x · HardSigmoid(x)``."""
    return x * ort_hardsigmoid(x)


def integer_mul(a: torch.Tensor, b: torch.Tensor, qa: Quantizer, qb: Quantizer,
                qc: Quantizer, reader_quantizes: bool = False) -> torch.Tensor:
    """QLinearMul as MLAS computes it: the exact integer product ``(a - zp_a)(b - zp_b)``,
    times float32 ``(s_a · s_b) / s_c``, plus the u8 zero point in float32, rounded half to
    even (broadcasting as the kernel's scalar-B path does)."""
    if not _ready(qa, qb, qc):
        return a * b if reader_quantizes else qc(a * b)
    ai, sa, _ = integers(a, qa)
    bi, sb, _ = integers(b, qb)
    sc, zc = act_qparams(qc.lo, qc.hi)
    v = (ai * bi).float() * ((sa * sb) / sc) + (zc.float() + U8_OFFSET)
    q = torch.clamp(torch.round(v), 0.0, 255.0) - U8_OFFSET
    return ((q - zc.float()) * sc).to(a.dtype)


# MLAS' logistic (the Eigen rational approximation), as its FMA3 kernel evaluates it on x86
_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
      2.48287947061529e-01)
_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
      1.16817656904453e-01, 9.93151921023180e-01)


def ort_logistic(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid as ONNX Runtime computes it on x86 (QLinearSigmoid builds its 256-entry table
    with it): clamp to [-18, 18], an odd rational polynomial in fused multiply-adds."""
    v = torch.clamp(x.float(), -18.0, 18.0)
    v2 = v * v
    consts = [torch.tensor(c, dtype=torch.float32) for c in _P + _Q]
    p = _fma(v2, consts[0], consts[1])
    for c in consts[2:5]:
        p = _fma(p, v2, c)
    p = p * v
    q = _fma(v2, consts[5], consts[6])
    for c in consts[7:]:
        q = _fma(q, v2, c)
    return torch.clamp(p / q + 0.5, 0.0, 1.0).to(x.dtype)
