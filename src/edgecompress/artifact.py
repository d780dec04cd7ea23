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
        """The parity record as plain data (stored in the artifact's metadata)."""
        return asdict(self)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: max|diff| {self.max_abs_diff:.3g}, top-1 agreement "
                f"{100 * self.top1_agreement:.2f}% on {self.samples} samples vs {self.reference}")


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
            perplexity=self.perplexity)

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
