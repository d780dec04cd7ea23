"""What an export gives back: the artifact and what was measured of it (parity, accuracy, latency).

These are records, below the exporters and the DeployableModel that both hand them around.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .report import ArtifactMetrics
from .runtime.base import LatencyStats, Runner


@dataclass
class Parity:
    """How closely an artifact's outputs follow its reference model on real samples.

    ``task`` says what the outputs are (classify, detect, segment, causal_lm, embedding) and
    ``metric`` which task metric judged them (``metric_value`` against ``min_metric``);
    ``outputs`` holds one record per named output (max |diff|, relative error, cosine, the
    bound it was held to); ``user_metric`` the user's ``metric=`` callable, when given.
    ``top1_agreement`` is the classification top-1 agreement (for other tasks: the task metric).
    """

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    samples: int
    reference: str
    max_allowed_diff: float | None
    min_agreement: float
    passed: bool
    task: str = "classify"
    metric: str = "top1_agreement"
    metric_value: float | None = None
    min_metric: float | None = None
    metric_extra: dict[str, Any] = field(default_factory=dict)  # e.g. mIoU, detection counts
    outputs: list[dict[str, Any]] = field(default_factory=list)
    user_metric: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)  # why it failed, one line per reason

    def to_dict(self) -> dict[str, Any]:
        """The parity record as plain data (stored in the artifact's metadata)."""
        return asdict(self)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        value = self.top1_agreement if self.metric_value is None else self.metric_value
        text = (f"{verdict} ({self.task}): max|diff| {self.max_abs_diff:.3g}, "
                f"{self.metric.replace('top1', 'top-1').replace('_', ' ')} {100 * value:.2f}%")
        if self.user_metric is not None:
            text += f", {self.user_metric['name']} {self.user_metric['value']:.4g}"
        text += f" on {self.samples} samples vs {self.reference}"
        return text + (f" [{'; '.join(self.failures)}]" if self.failures else "")


@dataclass
class Artifact:
    """An exported file (or folder) and what was measured of it."""

    path: Path
    format: str
    precision: str
    size_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    parity: Parity | None = None
    accuracy: float | None = None
    latency: LatencyStats | None = None
    compressed_bytes: dict[str, int] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    perplexity: float | None = None  # causal LMs, measured through the artifact's runtime

    def metrics(self) -> ArtifactMetrics:
        """The report row of this artifact (what was measured of it)."""
        return ArtifactMetrics(
            format=self.format, path=str(self.path), size_bytes=self.size_bytes,
            precision=self.precision,
            max_abs_diff=self.parity.max_abs_diff if self.parity else None,
            top1_agreement=self.parity.top1_agreement if self.parity else None,
            parity_ok=self.parity.passed if self.parity else None, accuracy=self.accuracy,
            latency_ms=self.latency.p50_ms if self.latency else None,
            latency_p10_ms=self.latency.p10_ms if self.latency else None,
            latency_p90_ms=self.latency.p90_ms if self.latency else None,
            load_1min=self.latency.load_1min if self.latency else None,
            compressed_bytes=self.compressed_bytes, notes=dict(self.notes),
            perplexity=self.perplexity, task=self.parity.task if self.parity else None,
            parity_metric=self.parity.metric if self.parity else None,
            user_metric=self.parity.user_metric if self.parity else None)

    def load(self, **options: Any) -> Runner:
        """A Runner for this artifact (``ec.load(self.path, **options)``)."""
        from .runtime import load

        return load(self.path, **options)

    def __str__(self) -> str:
        parts = [f"{self.format} {self.precision} {self.path} ({self.size_bytes:,} bytes)"]
        if self.parity:
            parts.append(str(self.parity))
        if self.accuracy is not None:
            parts.append(f"top-1 {100 * self.accuracy:.2f}%")
        if self.latency:
            parts.append(f"p50 {self.latency.p50_ms:.3f} ms")
        return " | ".join(parts)


__all__ = ["Artifact", "Parity"]
