"""Verification of an artifact through its Runner: parity with the reference model, accuracy
on the evaluation data, latency. Exporters do not verify themselves; the base class calls this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from torch import nn

from ..artifact import Parity
from ..data.bundle import DataBundle, iter_batches
from ..errors import InputError
from ..runtime.base import LatencyStats, Runner

if TYPE_CHECKING:
    from ..job import ExportJob

# (max |diff| allowed relative to the reference's largest |output|, min top-1 agreement)
TOLERANCES: dict[str, tuple[float | None, float]] = {
    "fp32": (1e-3, 1.0),
    "fp16": (2e-2, 0.98),
    "int8": (None, 0.98),  # INT8 artifacts are held to agreement with the simulated model
}


def tolerance_for(precision: str) -> tuple[float | None, float]:
    key = "int8" if precision.startswith("int8") else precision
    return TOLERANCES.get(key, TOLERANCES["fp32"])


@torch.no_grad()
def reference_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return model(x.to(device)).float().cpu().numpy()


def compare(ref: np.ndarray, out: np.ndarray, precision: str, reference: str,
            tolerance: float | None = None) -> Parity:
    """Parity of ``out`` against ``ref`` under the tolerances of ``precision``."""
    if ref.shape != out.shape:
        return Parity(float("inf"), float("inf"), 0.0, int(ref.shape[0]), reference, None, 1.0, False)
    rel, min_agree = tolerance_for(precision)
    if tolerance is not None:
        rel = tolerance
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    scale = max(1.0, float(np.abs(ref).max()))
    allowed = None if rel is None else rel * scale
    flat_ref, flat_out = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
    agree = float((flat_ref.argmax(1) == flat_out.argmax(1)).mean())
    max_diff = float(diff.max()) if diff.size else 0.0
    passed = agree >= min_agree and (allowed is None or max_diff <= allowed)
    return Parity(max_diff, float(diff.mean()) if diff.size else 0.0, agree, int(ref.shape[0]),
                  reference, allowed, min_agree, passed)


def check_parity(runner: Runner, reference: nn.Module, x: torch.Tensor, precision: str,
                 reference_name: str, tolerance: float | None = None) -> Parity:
    if not isinstance(x, torch.Tensor) or len(runner.outputs) > 1:  # several inputs/outputs
        from .flat import named_parity
        return named_parity(runner, reference, x, compare, precision, reference_name, tolerance)
    ref = reference_outputs(reference, x)
    out = runner(x.numpy().astype(runner.inputs[0].dtype if runner.inputs else np.float32))
    return compare(ref, np.asarray(out), precision, reference_name, tolerance)


def artifact_accuracy(runner: Runner, data: DataBundle | Iterable[Any] | None,
                      limit: int | None = None) -> float | None:
    """Top-1 accuracy of an artifact on labelled batches (or a bundle's ``val``) via its runner."""
    loader = data.val if isinstance(data, DataBundle) else data
    if loader is None:
        return None
    correct = total = 0
    dtype = runner.inputs[0].dtype if runner.inputs else "float32"
    for x, y in iter_batches(loader, limit):
        if y is None:
            return None
        if not isinstance(x, torch.Tensor):  # several inputs: accuracy needs class scores
            from .flat import runner_inputs
            out = np.asarray(runner(runner_inputs(runner, x)))
            if out.ndim != 2 or out.shape[0] != y.shape[0]:
                return None
        else:
            out = np.asarray(runner(x.numpy().astype(dtype)))
        correct += int((out.reshape(out.shape[0], -1).argmax(1) == y.numpy()).sum())
        total += int(y.numel())
    return correct / total if total else None


@dataclass
class Verification:
    """What verifying an artifact measured."""

    parity: Parity
    accuracy: float | None
    latency: LatencyStats | None
    perplexity: float | None = None  # causal LMs, through the artifact's runtime
    records: dict[str, Any] = field(default_factory=dict)  # task-specific records (metadata + notes)


def verify(runner: Runner, job: "ExportJob", precision: str, opts: Any) -> Verification:
    """Parity against ``job.reference``, accuracy on ``job.eval_data`` and latency, through
    ``runner`` (closed afterwards)."""
    try:
        parity = check_parity(runner, job.reference, job.parity_inputs, precision,
                              job.reference_name, opts.tolerance)
        acc = artifact_accuracy(runner, job.eval_data, opts.accuracy_samples)
        latency = artifact_latency(runner, opts.benchmark_runs, x=job.example)
    finally:
        runner.close()
    return Verification(parity, acc, latency)


def artifact_latency(runner: Runner, runs: int, warmup: int = 5,
                     x: Any = None) -> LatencyStats | None:
    """p50 (p10–p90) of ``runs`` single calls after up to ``warmup`` untimed ones (0: skip), on
    the real input ``x`` (a batch of 1) when given."""
    if not runs:
        return None
    feeds = None
    if x is not None:
        from .flat import runner_inputs
        feeds = runner_inputs(runner, x)
        feeds = next(iter(feeds.values())) if isinstance(x, torch.Tensor) else feeds
        try:
            runner.check_inputs(feeds)
        except InputError:  # the artifact takes another layout (NHWC): time a sample of it
            feeds = None
    return runner.benchmark(warmup=min(warmup, runs), runs=runs, x=feeds, with_system=False)
