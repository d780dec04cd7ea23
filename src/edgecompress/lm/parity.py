"""Parity of a language-model artifact: next-token agreement and perplexity delta.

An artifact is compared on held-out windows with the model it claims to reproduce (the
simulated quantized model for a quantized file, else the float model) and, for the record, with
the float model too. A parity record passes when next-token agreement and the relative
perplexity change stay within the precision's tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifact import Parity
from .metrics import logits_of, next_token_agreement, window_nll

# precision -> (min next-token agreement, max relative perplexity change) vs the reference.
# Quantized files differ from the simulated model only by llama.cpp's arithmetic (it quantizes
# activations to 8 bits inside its integer dot products), F16 files by float16 weights.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (0.99, 0.005), "fp16": (0.98, 0.01), "int8-weight": (0.95, 0.02),
    "int4-weight": (0.90, 0.03),
}


@torch.no_grad()
def torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return logits_of(model, x.to(device)).float().cpu().numpy()


def _ppl(logits: np.ndarray, ids: torch.Tensor) -> float:
    nll, n, _ = window_nll(logits, ids)
    return float(np.exp(nll / n))


def lm_parity(artifact_logits: np.ndarray, windows: torch.Tensor, reference: nn.Module,
              reference_name: str, float_model: nn.Module | None, precision: str
              ) -> tuple[Parity, dict[str, Any]]:
    """The parity record plus the full comparison (vs reference and vs float) as plain data."""
    ref = torch_logits(reference, windows)
    ppl_art, ppl_ref = _ppl(artifact_logits, windows), _ppl(ref, windows)
    record: dict[str, Any] = {
        "windows": int(windows.shape[0]), "tokens": int(windows[:, 1:].numel()),
        "reference": reference_name, "perplexity_artifact": ppl_art,
        "perplexity_reference": ppl_ref, "perplexity_delta": ppl_art / ppl_ref - 1,
        "next_token_agreement": next_token_agreement(artifact_logits, ref)}
    if float_model is not None and float_model is not reference:
        flt = torch_logits(float_model, windows)
        ppl_float = _ppl(flt, windows)
        record.update(perplexity_float=ppl_float, perplexity_delta_vs_float=ppl_art / ppl_float - 1,
                      next_token_agreement_vs_float=next_token_agreement(artifact_logits, flt))
    min_agree, max_delta = TOLERANCES.get(precision, TOLERANCES["fp32"])
    diff = np.abs(artifact_logits.astype(np.float64) - ref)
    passed = record["next_token_agreement"] >= min_agree and \
        abs(record["perplexity_delta"]) <= max_delta
    record.update(min_agreement=min_agree, max_perplexity_delta=max_delta, passed=passed)
    parity = Parity(float(diff.max()), float(diff.mean()), record["next_token_agreement"],
                    record["tokens"], reference_name, None, min_agree, passed)
    return parity, record
