"""Scale and zero point of 8-bit activations and int8 weights, as ONNX Runtime computes them
(shared by the fake-quantization primitives and the integer kernels' simulation)."""

from __future__ import annotations

import torch

W_QMAX = 127  # symmetric int8 weights in [-127, 127], as ORT's QDQ quantizer writes them
ACT_QMIN, ACT_QMAX = -128, 127  # asymmetric 8-bit: u8 and s8 give the same grid (zp shifts by 128)
W_QMAX_REDUCED = 64  # ORT's reduce_range: 7-bit weights in [-64, 64] (x86 CPUs without VNNI)

def act_qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an asymmetric 8-bit range, as ONNX Runtime computes them."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / float(ACT_QMAX - ACT_QMIN)
    # ORT's compute_scale_zp: a scale below float32's smallest normal becomes 1 (a constant or
    # all-zero tensor), else 1 / scale overflows
    scale = torch.where(scale >= torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
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
