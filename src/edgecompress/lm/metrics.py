"""Token-level metrics of causal LMs: loss, perplexity, next-token accuracy and agreement.

The same functions score a torch model (logits from its forward) and an artifact (logits a
runtime returns as numpy), so the two perplexities are computed identically on identical windows.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.bundle import iter_batches

if TYPE_CHECKING:
    from ..report import StageMetrics

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``(batch, seq, vocab)`` logits of a HF causal LM (or any module returning logits)."""
    out = model(ids)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{type(model).__name__} returned {type(out).__name__} without logits")
    return logits


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position ``t`` predicts label ``t + 1`` (``loss_fn`` of train)."""
    logits = logits_of(model, x)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), y[:, 1:].flatten())


def window_nll(logits: Any, ids: Any) -> tuple[float, int, int]:
    """(summed negative log-likelihood, predicted tokens, correct top-1) of one batch of windows."""
    logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    ids = torch.as_tensor(ids)
    # float64: a float32 sum over thousands of tokens would hide perplexity changes below 1e-6
    pred, target = logits[:, :-1].double(), ids[:, 1:]
    nll = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="sum")
    correct = int((pred.argmax(-1) == target).sum())
    return float(nll), int(target.numel()), correct


def score(logits_fn: LogitsFn, loader: Iterable[Any], limit_samples: int | None = None
          ) -> dict[str, float]:
    """Perplexity and next-token top-1 accuracy of ``logits_fn`` over ``loader``'s windows."""
    nll = 0.0
    tokens = correct = 0
    for x, _ in iter_batches(loader, limit_samples):
        s, n, c = window_nll(logits_fn(x), x)
        nll, tokens, correct = nll + s, tokens + n, correct + c
    if tokens == 0:
        raise ValueError("no tokens to score: the loader yielded no windows of 2+ tokens")
    return {"perplexity": math.exp(nll / tokens), "next_token_accuracy": correct / tokens,
            "tokens": tokens}


@torch.no_grad()
def perplexity(model: nn.Module, loader: Iterable[Any], limit_samples: int | None = None
               ) -> dict[str, float]:
    """Perplexity and next-token accuracy of a torch causal LM on ``loader`` (eval mode)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        return score(lambda x: logits_of(model, x.to(device)).cpu(), loader, limit_samples)
    finally:
        model.train(was_training)


def next_token_agreement(a: Any, b: Any) -> float:
    """Fraction of positions where two logits tensors pick the same next token."""
    a_t = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    b_t = torch.as_tensor(np.asarray(b)) if not isinstance(b, torch.Tensor) else b
    return float((a_t.argmax(-1) == b_t.argmax(-1)).float().mean())


@torch.no_grad()
def forward_ms(model: nn.Module, x: torch.Tensor, warmup: int, runs: int) -> float:
    """Median wall time in ms of one forward of ``x`` (batch 1, whole window)."""
    model.eval()
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        model(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def measure_lm_stage(model: nn.Module, form: Any, data: Any, cfg: Any, name: str) -> "StageMetrics":
    """One pipeline stage of a causal LM: params, size, sparsity, MACs, perplexity, latency.

    ``accuracy`` is next-token top-1 accuracy on the held-out windows; ``perplexity`` its
    perplexity; ``latency_ms`` one forward of a batch-1 window in torch.
    """
    from ..measure import compressed_sizes, count_macs, count_params, serialized_state, sparsity
    from ..report import StageMetrics

    state = serialized_state(model)
    m = StageMetrics(stage=name, form=form.value, params=count_params(model),
                     size_bytes=len(state), sparsity=sparsity(model))
    if cfg.compressed:
        m.compressed_bytes = compressed_sizes(state)
    x = data.example_input
    if cfg.macs:
        m.macs = count_macs(model, x)
    if cfg.accuracy and data.val is not None:
        s = perplexity(model, data.val, cfg.accuracy_samples)
        m.accuracy, m.perplexity = s["next_token_accuracy"], s["perplexity"]
    if cfg.latency:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        m.latency_ms = forward_ms(model, x[:1].to(device), cfg.latency_warmup, cfg.latency_runs)
    return m
