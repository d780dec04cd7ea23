"""The measured report of a pipeline: one row per stage and one per exported artifact."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .measure import describe_count, describe_size


@dataclass
class StageMetrics:
    """What was measured after one stage (the input model is stage 0)."""

    stage: str
    form: str
    params: int | None = None
    size_bytes: int | None = None
    macs: int | None = None
    sparsity: float | None = None
    accuracy: float | None = None
    latency_ms: float | None = None  # p50 through a Runner, batch 1
    perplexity: float | None = None  # causal LMs: held-out perplexity (accuracy: next-token top-1)
    seconds: float | None = None  # wall time the pass took
    compressed_bytes: dict[str, int] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class ArtifactMetrics:
    """What was measured of one exported artifact through its Runner."""

    format: str
    path: str
    size_bytes: int
    precision: str
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    parity_ok: bool | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    compressed_bytes: dict[str, int] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    perplexity: float | None = None  # causal LMs: measured through the artifact's runtime


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@dataclass
class Report:
    """Stages and artifacts, printable as a table and serialisable to dict/JSON/Markdown."""

    stages: list[StageMetrics] = field(default_factory=list)
    artifacts: list[ArtifactMetrics] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    STAGE_COLUMNS = ("stage", "params", "size", "MACs", "sparsity", "top-1", "p50 ms", "time s")
    ARTIFACT_COLUMNS = ("format", "file", "precision", "size", "max|diff|", "top-1 agree",
                        "top-1", "p50 ms")

    def stage_rows(self) -> list[list[str]]:
        return [[s.stage + (" (FAILED)" if s.error else ""), describe_count(s.params),
                 describe_size(s.size_bytes), describe_count(s.macs),
                 _pct(s.sparsity), _pct(s.accuracy), _ms(s.latency_ms),
                 "" if s.seconds is None else f"{s.seconds:.1f}"] for s in self.stages]

    def artifact_rows(self) -> list[list[str]]:
        # the file name tells apart two artifacts of one format (e.g. ONNX QDQ and QOperator)
        return [[a.format, Path(a.path).name, a.precision, describe_size(a.size_bytes),
                 "n/a" if a.max_abs_diff is None else f"{a.max_abs_diff:.2e}",
                 _pct(a.top1_agreement) + ("" if a.parity_ok in (None, True) else " FAIL"),
                 _pct(a.accuracy), _ms(a.latency_ms)] for a in self.artifacts]

    def _with_perplexity(self, header: tuple[str, ...], rows: list[list[str]],
                         items: list[Any]) -> tuple[tuple[str, ...], list[list[str]]]:
        """Language models add a perplexity column (only when some row has one)."""
        if all(getattr(i, "perplexity", None) is None for i in items):
            return header, rows
        return (*header, "ppl"), [r + ["n/a" if i.perplexity is None else f"{i.perplexity:.3f}"]
                                  for r, i in zip(rows, items)]

    def _tables(self) -> list[tuple[tuple[str, ...], list[list[str]]]]:
        tables = [self._with_perplexity(self.STAGE_COLUMNS, self.stage_rows(), self.stages)]
        if self.artifacts:
            tables.append(self._with_perplexity(self.ARTIFACT_COLUMNS, self.artifact_rows(),
                                                self.artifacts))
        return tables

    def __str__(self) -> str:
        parts = [_text_table(h, r) for h, r in self._tables()]
        for s in self.stages:
            if s.error:
                parts.append(f"stage '{s.stage}' failed: {s.error}")
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [asdict(s) for s in self.stages],
                "artifacts": [asdict(a) for a in self.artifacts], "info": self.info}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_markdown(self) -> str:
        tables = self._tables()
        parts = ["### Stages", "", _md_table(*tables[0])]
        if self.artifacts:
            parts += ["", "### Artifacts", "", _md_table(*tables[1])]
        return "\n".join(parts) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        return cls(stages=[StageMetrics(**s) for s in d.get("stages", [])],
                   artifacts=[ArtifactMetrics(**a) for a in d.get("artifacts", [])],
                   info=dict(d.get("info", {})))

    def add_artifact(self, metrics: ArtifactMetrics) -> None:
        self.artifacts = [a for a in self.artifacts if a.path != metrics.path] + [metrics]


def _text_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join([line, sep, *body])


def _md_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
