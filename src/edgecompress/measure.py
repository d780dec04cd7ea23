"""Measurements of a model: every number in a report comes from here, counted, never estimated."""

from __future__ import annotations

import io
import logging
import lzma
import zipfile
from typing import Any

import torch
from torch import nn

log = logging.getLogger("edgecompress")


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def serialized_state(model: nn.Module) -> bytes:
    """The model's weights exactly as :meth:`DeployableModel.save` writes them."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def serialized_size(model: nn.Module) -> int:
    """Bytes of the serialized state dict (what the weights take on disk)."""
    return len(serialized_state(model))


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Measured xz and zip (deflate) sizes of ``data``: zeros from pruning compress away."""
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model", data)
    return {"xz": len(lzma.compress(data, preset=6)), "zip": len(zbuf.getvalue())}


def _weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Weights of layers that hold learned matrices/kernels (biases and norms excluded)."""
    out = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            out.append(w.detach())
        elif callable(w):  # quantized modules expose weight() returning a quantized tensor
            try:
                t = w()
                out.append(t.dequantize() if t.is_quantized else t)
            except Exception:  # noqa: BLE001 - not a weight accessor after all
                continue
    return out


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero elements among conv/linear weights."""
    weights = _weight_tensors(model)
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def count_macs(model: nn.Module, example_input: Any) -> int | None:
    """Multiply-accumulates of one forward pass on ``example_input`` (batch of 1; a tensor, a
    tuple or a dict of tensors).

    Counted with torch's own FLOP counter (conv, matmul, attention), which reports 2 FLOPs per
    MAC. Returns None when the model cannot be run under the counter (e.g. quantized kernels).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .data.inputs import call_model, head, to_device

    x = head(example_input, 1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            call_model(model, to_device(x, device))
        return int(counter.get_total_flops()) // 2
    except Exception as exc:  # noqa: BLE001 - report "n/a" rather than fail a whole pipeline
        log.debug("MAC count failed: %s", exc)
        return None
    finally:
        model.train(was_training)


def describe_size(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def describe_count(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"
