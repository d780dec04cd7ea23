"""Pick the fastest artifact for a device: export the candidates, measure each here, choose.

``ec.select(dm, target="x86")`` exports every format and precision the target can run (INT8
where the model carries a recipe, and the float model beside it, so an INT8 that is slower than
FP32 is seen), verifies each through its runner, times them interleaved in one process (single
runs, p50) and reports the fastest that passed verification. Nothing is estimated: a format
that cannot be exported here appears with the reason it was refused.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import ConfigError, EdgeCompressError
from .formats import FORMATS, get_format

if TYPE_CHECKING:
    from .deployable import DeployableModel
    from .targets import Target

log = logging.getLogger("edgecompress")

# CPU formats tried when neither ``formats`` nor the target says otherwise, in this order
CPU_FORMATS = ("onnx", "openvino", "executorch", "tflite", "ncnn", "torchscript")
# extra export options per (format, variant); the variant is part of the candidate's name
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "openvino": {"": {}, "nncf": {"quantizer": "nncf"}},
}


@dataclass
class Candidate:
    """One exported artifact and what was measured of it (or why it could not be made)."""

    format: str
    precision: str
    variant: str = ""
    path: str | None = None
    size_bytes: int | None = None
    parity_ok: bool | None = None
    accuracy: float | None = None
    p50_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.format} {self.precision}" + (f" ({self.variant})" if self.variant else "")

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self.parity_ok) and self.p50_ms is not None


@dataclass
class Selection:
    """The candidates, the fastest verified one and what the comparison showed."""

    candidates: list[Candidate]
    best: Candidate | None
    threads: int | None
    machine: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best.name if self.best else None, "threads": self.threads,
                "machine": self.machine, "notes": self.notes,
                "candidates": [asdict(c) for c in self.candidates]}

    def to_markdown(self) -> str:
        lines = [f"# Fastest verified artifact on this machine ({self.machine}, "
                 f"{self.threads or 'default'} threads)", "",
                 f"**{self.best.name}**: {self.best.p50_ms:.3f} ms p50" if self.best else
                 "**no candidate passed verification**", "",
                 "| candidate | p50 ms (p25–p75) | parity | top-1 | bytes | note |",
                 "|---|---|---|---|---|---|"]
        for c in sorted(self.candidates, key=lambda c: (c.p50_ms is None, c.p50_ms or 0)):
            ms = f"{c.p50_ms:.3f} ({c.p25_ms:.3f}–{c.p75_ms:.3f})" if c.p50_ms is not None else "–"
            acc = f"{100 * c.accuracy:.2f}%" if c.accuracy is not None else "–"
            lines.append(f"| {c.name} | {ms} | {'pass' if c.parity_ok else 'FAIL' if c.parity_ok is False else '–'} "
                         f"| {acc} | {c.size_bytes or '–'} | {(c.error or '')[:160]} |")
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes]) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def select(dm: "DeployableModel", target: "str | Target | None" = None,
           formats: Sequence[str] | None = None, out_dir: str | Path = "edgecompress-select",
           threads: int | None = None, runs: int = 50, **export_options: Any) -> Selection:
    """Export the candidates ``target`` can run, measure each here, return the fastest verified.

    Args:
        dm: the compressed model (with an INT8 recipe, its float model is measured beside it).
        target: a device profile (its threads and arch); None: this machine's CPU.
        formats: formats to try (default: the CPU formats available here).
        out_dir: folder for the artifacts (one per candidate).
        threads: runtime threads (default: the target's, else the runtime's default).
        runs: interleaved timed single runs per candidate (p50 reported).
        **export_options: passed to every export (e.g. ``parity_samples``).
    """
    from .targets import get_target

    tgt = get_target(target) if target is not None else None
    threads = threads or (tgt.threads if tgt else None)
    out = Path(out_dir)
    notes = _machine_notes(tgt)
    candidates = [_export(d, fmt, precision, variant, out, threads, export_options)
                  for d, fmt, precision, variant in _plan(dm, formats, tgt)]
    _time_interleaved([c for c in candidates if c.error is None and c.parity_ok], threads, runs,
                      dm.example_input(1))
    usable = [c for c in candidates if c.usable]
    best = min(usable, key=lambda c: c.p50_ms) if usable else None
    notes += _comparisons(candidates, best)
    selection = Selection(candidates, best, threads, f"{platform.machine()} {platform.processor()}".strip(),
                          notes)
    log.info("select: fastest verified artifact is %s", best.name if best else "none")
    return selection


def _plan(dm: "DeployableModel", formats: Sequence[str] | None,
          tgt: "Target | None") -> list[tuple["DeployableModel", str, str, str]]:
    names = list(formats) if formats else [f for f in CPU_FORMATS if f in FORMATS
                                           and FORMATS[f].available()]
    for name in names:
        get_format(name)  # unknown formats fail before any work
    float_dm = _float_twin(dm)
    static = dm.quant_recipe is not None and dm.quant_recipe.scheme == "static"
    plan = []
    for name in names:
        spec = FORMATS[name]
        if spec.needs_gpu:
            continue
        plan.append((float_dm, name, "fp32", ""))
        if spec.fp16:
            plan.append((float_dm, name, "fp16", ""))
        if static and spec.int8_static:
            plan += [(dm, name, "int8", v) for v in VARIANTS.get(name, {"": {}})]
    if not plan:
        raise ConfigError(f"no CPU format to select from among {names}")
    return plan


def _float_twin(dm: "DeployableModel") -> "DeployableModel":
    """The same model without its quantization (FP32/FP16 candidates are made from it)."""
    if dm.quant_recipe is None or dm.float_model is None:
        return dm
    twin = copy.copy(dm)
    twin.model, twin.quant_recipe, twin.float_model = dm.float_model, None, None
    twin.report = copy.deepcopy(dm.report)
    return twin


def _export(dm: "DeployableModel", fmt: str, precision: str, variant: str, out: Path,
            threads: int | None, export_options: dict[str, Any]) -> Candidate:
    spec = FORMATS[fmt]
    cand = Candidate(fmt, precision, variant)
    stem = f"model_{fmt}_{precision}" + (f"_{variant}" if variant else "")
    path = out / (stem if spec.directory else stem + spec.suffixes[0])
    options = {**export_options, **VARIANTS.get(fmt, {}).get(variant, {}),
               "threads": threads, "benchmark_runs": 0}
    if precision == "fp16":
        options["fp16"] = True
    try:
        art = dm.export(fmt, path, **options)
    except EdgeCompressError as exc:
        cand.error = str(exc)
        log.info("select: %s refused: %s", cand.name, str(exc)[:200])
        return cand
    cand.path, cand.size_bytes = str(art.path), art.size_bytes
    cand.parity_ok = art.parity.passed if art.parity else None
    cand.accuracy = art.accuracy
    return cand


def _time_interleaved(cands: list[Candidate], threads: int | None, runs: int,
                      example: Any = None) -> None:
    """p50 of single runs on the user's real ``example`` (a batch of 1), the candidates
    alternating so load changes hit them all alike."""
    from .runtime import load

    if not cands:
        return
    # ORT's spinning threads would steal the cores from the runtime timed next
    runners = [load(c.path, threads=threads, spinning=False) for c in cands]
    try:
        xs = [_real_input(r, example) for r in runners]
        for r, x in zip(runners, xs):  # warm-up: first calls allocate and pick kernels
            for _ in range(3):
                r(x)
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(runs):
            for i, r in enumerate(runners):
                x = xs[i]
                t0 = time.perf_counter()
                r(x)
                times[i].append(time.perf_counter() - t0)
    finally:
        for r in runners:
            r.close()
    for c, t in zip(cands, times):
        ms = np.asarray(t) * 1000
        c.p50_ms, c.p25_ms, c.p75_ms = (round(float(np.percentile(ms, p)), 4) for p in (50, 25, 75))


def _real_input(runner: Any, example: Any) -> Any:
    """``example`` as ``runner`` takes it (its names and dtypes), or a random sample of the
    runner's own spec when the artifact takes another layout (NHWC)."""
    import torch

    from .errors import InputError
    from .export.flat import runner_inputs

    if example is None:
        return runner.sample_input(1)
    feeds = runner_inputs(runner, example)
    try:
        runner.check_inputs(feeds)
    except InputError:
        log.info("select: %s takes another input layout; timing a sample of its own", runner.path)
        return runner.sample_input(1)
    return next(iter(feeds.values())) if isinstance(example, torch.Tensor) else feeds


def _machine_notes(tgt: "Target | None") -> list[str]:
    here = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if tgt is not None and tgt.arch != here:
        log.warning("select: the target %s is %s but this machine is %s: the timings are this "
                    "machine's; run select on the device to choose for it", tgt.name, tgt.arch, here)
        return [f"measured on this {here} machine, not on the {tgt.arch} target {tgt.name}: "
                f"run select on the device to choose for it"]
    return []


def _comparisons(cands: list[Candidate], best: Candidate | None) -> list[str]:
    """Say where INT8 is slower than FP32 (per format) and what is faster."""
    notes = []
    timed = {(c.format, c.precision): c for c in cands if c.usable and not c.variant}
    for (fmt, precision), c in timed.items():
        fp32 = timed.get((fmt, "fp32"))
        if precision.startswith("int8") and fp32 is not None and c.p50_ms > fp32.p50_ms:
            faster = f"; fastest verified here: {best.name} ({best.p50_ms:.3f} ms)" if best else ""
            notes.append(f"INT8 is slower than FP32 in {fmt} ({c.p50_ms:.3f} vs {fp32.p50_ms:.3f} ms "
                         f"p50){faster}")
    return notes
