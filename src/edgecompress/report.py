"""The measured report of a pipeline: one row per stage and one per exported artifact."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .measure import describe_count, describe_size


# what a stage row was measured on, by the stage's form
MEASURED_ON = {"torch-float": "torch (float)", "torch-fakequant": "simulated INT8 (torch)",
               "onnx-graph": "ONNX Runtime"}


@dataclass
class StageMetrics:
    """What was measured after one stage (the input model is stage 0).

    Sizes and latencies are those of the stage's model as it is in memory: for a quantization
    stage that is the simulated INT8 torch model (float weights plus observers), not the INT8
    artifact a device gets, which the artifact rows measure.
    """

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
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    load_1min: float | None = None  # the machine's 1-minute load average after timing

    @property
    def measured_on(self) -> str:
        return MEASURED_ON.get(self.form, self.form)


@dataclass
class ArtifactMetrics:
    """What was measured of one exported artifact through its Runner (what a device gets)."""

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
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    load_1min: float | None = None
    perplexity: float | None = None  # causal LMs: measured through the artifact's runtime
    task: str | None = None  # what verification judged it as (classify, segment, detect...)
    parity_metric: str | None = None  # the task metric ``top1_agreement`` holds the value of
    user_metric: dict[str, Any] | None = None  # the user's metric= (name, value, threshold)


# the task metric as an artifact row shows it
METRIC_LABELS = {"top1_agreement": "top-1", "pixel_agreement": "pixels",
                 "next_token_agreement": "next token", "cosine": "cosine",
                 "detection_agreement": "boxes"}


def _agreement(a: "ArtifactMetrics") -> str:
    if a.top1_agreement is None:
        return "n/a"
    if a.parity_metric == "cosine":
        text = f"{a.top1_agreement:.4f} cosine"
    else:
        text = _pct(a.top1_agreement) + (f" {METRIC_LABELS.get(a.parity_metric or '', '')}"
                                          if a.parity_metric not in (None, "top1_agreement") else "")
    return text + ("" if a.parity_ok in (None, True) else " FAIL")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ms(p50: float | None, p10: float | None = None, p90: float | None = None) -> str:
    if p50 is None:
        return "n/a"
    digits = 3 if p50 < 10 else 1
    text = f"{p50:.{digits}f}"
    return text if p10 is None or p90 is None else f"{text} ({p10:.{digits}f}–{p90:.{digits}f})"


def _xz(sizes: dict[str, int] | None) -> str:
    return describe_size(sizes.get("xz")) if sizes else "n/a"


def busy_threshold() -> float:
    """A 1-minute load average above the CPU count means timed runs shared the CPUs."""
    return float(os.cpu_count() or 1)


@dataclass
class Report:
    """Stages and artifacts, printable as a table and serialisable to dict/JSON/Markdown.

    Stage rows measure each stage's model in torch (``measured on`` says which form);
    artifact rows measure the exported files through their runtimes — the size, accuracy and
    latency a device gets. Latencies are p50 with the p10–p90 spread in brackets.
    """

    stages: list[StageMetrics] = field(default_factory=list)
    artifacts: list[ArtifactMetrics] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    STAGE_COLUMNS = ("stage", "measured on", "params", "size", "MACs", "sparsity", "top-1",
                     "p50 ms (p10–p90)", "time s")
    ARTIFACT_COLUMNS = ("format", "file", "precision", "size", "max|diff|", "agreement",
                        "top-1", "p50 ms (p10–p90)")

    def _with_xz(self, rows: list[Any]) -> bool:
        return any(r.compressed_bytes for r in rows)

    def stage_columns(self) -> tuple[str, ...]:
        """Column names of :meth:`stage_rows` (``xz size`` when compressed sizes were measured)."""
        return self.STAGE_COLUMNS + (("xz size",) if self._with_xz(self.stages) else ())

    def artifact_columns(self) -> tuple[str, ...]:
        """Column names of :meth:`artifact_rows`."""
        return self.ARTIFACT_COLUMNS + (("xz size",) if self._with_xz(self.artifacts) else ())

    def stage_rows(self) -> list[list[str]]:
        """One row of formatted cells per stage (see :meth:`stage_columns`)."""
        xz = self._with_xz(self.stages)
        return [[s.stage + (" (FAILED)" if s.error else ""), s.measured_on,
                 describe_count(s.params), describe_size(s.size_bytes), describe_count(s.macs),
                 _pct(s.sparsity), _pct(s.accuracy),
                 _ms(s.latency_ms, s.latency_p10_ms, s.latency_p90_ms),
                 "" if s.seconds is None else f"{s.seconds:.1f}"]
                + ([_xz(s.compressed_bytes)] if xz else []) for s in self.stages]

    def artifact_rows(self) -> list[list[str]]:
        """One row of formatted cells per artifact (see :meth:`artifact_columns`)."""
        xz = self._with_xz(self.artifacts)
        # the file name tells apart two artifacts of one format (e.g. ONNX QDQ and QOperator)
        return [[a.format, Path(a.path).name, a.precision, describe_size(a.size_bytes),
                 "n/a" if a.max_abs_diff is None else f"{a.max_abs_diff:.2e}",
                 _agreement(a),
                 _pct(a.accuracy), _ms(a.latency_ms, a.latency_p10_ms, a.latency_p90_ms)]
                + ([_xz(a.compressed_bytes)] if xz else []) for a in self.artifacts]

    def export_failures(self) -> dict[str, str]:
        """Format → error text of the exports that failed (recorded by ``edgecompress compress``)."""
        return dict(self.info.get("export_failures") or {})

    def kept_failures(self) -> list[ArtifactMetrics]:
        """Artifacts written although they failed verification (``on_parity_fail="keep"``)."""
        return [a for a in self.artifacts if a.parity_ok is False]

    def remarks(self) -> list[str]:
        """Plain-language notes a reader needs to read the tables right."""
        out = []
        if any(s.form == "torch-fakequant" for s in self.stages):
            out.append("Quantization stages are measured on the simulated INT8 torch model "
                       "(float weights plus observers): its size and latency are not what a "
                       "device gets. The artifact rows measure the INT8 files through their "
                       "runtimes.")
        loads = [m.load_1min for m in [*self.stages, *self.artifacts] if m.load_1min is not None]
        if loads and max(loads) > busy_threshold():
            out.append(f"The machine was busy while timing (1-minute load average up to "
                       f"{max(loads):.1f} on {os.cpu_count()} CPUs): latencies are noisy; "
                       f"compare them only within one run, or rerun on a quiet machine.")
        return out

    def _with_perplexity(self, header: tuple[str, ...], rows: list[list[str]],
                         items: list[Any]) -> tuple[tuple[str, ...], list[list[str]]]:
        """Language models add a perplexity column (only when some row has one)."""
        if all(getattr(i, "perplexity", None) is None for i in items):
            return header, rows
        return (*header, "ppl"), [r + ["n/a" if i.perplexity is None else f"{i.perplexity:.3f}"]
                                  for r, i in zip(rows, items)]

    def _tables(self) -> list[tuple[tuple[str, ...], list[list[str]]]]:
        tables = [self._with_perplexity(self.stage_columns(), self.stage_rows(), self.stages)]
        if self.artifacts:
            tables.append(self._with_perplexity(self.artifact_columns(), self.artifact_rows(),
                                                self.artifacts))
        return tables

    def __str__(self) -> str:
        parts = [_text_table(h, r) for h, r in self._tables()]
        for s in self.stages:
            if s.error:
                parts.append(f"stage '{s.stage}' failed: {s.error}")
        parts += [f"export to {fmt} failed: {err}" for fmt, err in self.export_failures().items()]
        parts += [f"{Path(a.path).name} FAILED verification (kept on request): "
                  f"{a.notes.get('verification', '')}" for a in self.kept_failures()]
        parts += [f"note: {r}" for r in self.remarks()]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (stages, artifacts, info)."""
        return {"stages": [{**asdict(s), "measured_on": s.measured_on} for s in self.stages],
                "artifacts": [asdict(a) for a in self.artifacts], "info": self.info}

    def to_json(self, indent: int = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_markdown(self, level: int = 2) -> str:
        """The report as Markdown; section headings at ``level`` (2: under a ``#`` title)."""
        h = "#" * level
        tables = self._tables()
        parts = [f"{h} Stages", "", _md_table(*tables[0])]
        if self.artifacts:
            parts += ["", f"{h} Artifacts", "", _md_table(*tables[1])]
        failures = self.export_failures()
        failed = [s for s in self.stages if s.error]
        kept = self.kept_failures()
        if failures or failed or kept:
            parts += ["", f"{h} Failures", ""]
            parts += [f"- stage `{s.stage}`: {_md_text(s.error or '')}" for s in failed]
            parts += [f"- export to `{fmt}`: {_md_text(err)}" for fmt, err in failures.items()]
            parts += [f"- `{Path(a.path).name}` failed verification (kept on request): "
                      f"{_md_text(a.notes.get('verification', ''))}" for a in kept]
        if self.remarks():
            parts += ["", f"{h} Notes", ""] + [f"- {_md_text(r)}" for r in self.remarks()]
        return "\n".join(parts) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        """A report from :meth:`to_dict`'s output (unknown keys ignored)."""
        return cls(stages=[_known(StageMetrics, s) for s in d.get("stages", [])],
                   artifacts=[_known(ArtifactMetrics, a) for a in d.get("artifacts", [])],
                   info=dict(d.get("info", {})))

    def add_artifact(self, metrics: ArtifactMetrics) -> None:
        """Add an artifact row, replacing an earlier row of the same path."""
        self.artifacts = [a for a in self.artifacts if a.path != metrics.path] + [metrics]


def _known(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` keeping only its fields (derived keys such as ``measured_on`` dropped)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _text_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join([line, sep, *body])


def _md_text(text: str) -> str:
    """One line of Markdown: no line breaks, and ``|`` cannot end a table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_text(h) for h in header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(_md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
