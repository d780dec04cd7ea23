"""Parity and accuracy of an artifact, measured through its Runner against the torch model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.bundle import DataBundle, iter_batches
from ..runtime.base import Runner

# (max |diff| allowed relative to the reference's largest |output|, min top-1 agreement)
TOLERANCES: dict[str, tuple[float | None, float]] = {
    "fp32": (1e-3, 1.0),
    "fp16": (2e-2, 0.98),
    "int8": (None, 0.98),  # INT8 artifacts are held to agreement with the simulated model
}


@dataclass
class Parity:
    """How closely an artifact's outputs follow its reference model on real samples."""

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    samples: int
    reference: str
    max_allowed_diff: float | None
    min_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: max|diff| {self.max_abs_diff:.3g}, top-1 agreement "
                f"{100 * self.top1_agreement:.2f}% on {self.samples} samples vs {self.reference}")


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
    ref = reference_outputs(reference, x)
    out = runner(x.numpy().astype(runner.inputs[0].dtype if runner.inputs else np.float32))
    return compare(ref, np.asarray(out), precision, reference_name, tolerance)


def artifact_accuracy(runner: Runner, data: DataBundle, limit: int | None = None) -> float | None:
    """Top-1 accuracy of an artifact on ``data.val`` through its runner."""
    if data.val is None:
        return None
    correct = total = 0
    dtype = runner.inputs[0].dtype if runner.inputs else "float32"
    for x, y in iter_batches(data.val, limit):
        if y is None:
            return None
        out = np.asarray(runner(x.numpy().astype(dtype)))
        correct += int((out.reshape(out.shape[0], -1).argmax(1) == y.numpy()).sum())
        total += int(y.numel())
    return correct / total if total else None
