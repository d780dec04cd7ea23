"""Exporter base class and Artifact: write atomically, embed metadata, verify through a Runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from .._io import atomic_path, disk_full_is_clear, ensure_free_space, path_size
from ..errors import ConfigError, ExportError, ParityError
from ..formats import FORMATS, FormatSpec
from ..measure import compressed_sizes
from ..metadata import base_metadata, check_destination
from ..options import from_options, option, validate_options
from ..report import ArtifactMetrics
from ..runtime.base import LatencyStats, Runner
from .parity import Parity, artifact_accuracy, check_parity

if TYPE_CHECKING:
    from ..deployable import DeployableModel

log = logging.getLogger("edgecompress")


@dataclass
class ExportOptions:
    """Options every exporter takes (format-specific exporters add their own)."""

    verify: bool = option(True, "Run the artifact through its Runner and record parity.")
    parity_samples: int = option(256, "Validation samples used for the parity check.", low=1)
    on_parity_fail: str = option("warn", "What a failed parity check does.", choices=("warn", "raise"))
    tolerance: float | None = option(None, "Max |diff| relative to the output scale "
                                           "(None: the precision's default).", low=0)
    allow_float_fallback: bool = option(False, "Export float weights when the format cannot hold "
                                               "the INT8 recipe (recorded in the metadata).")
    threads: int | None = option(None, "Threads for verification and benchmark.", low=1)
    benchmark_runs: int = option(30, "Timed runs for the artifact's latency (0: skip).", low=0)
    accuracy_samples: int | None = option(None, "Cap on val samples for accuracy (None: all).", low=1)
    compressed: bool = option(False, "Also measure the xz/zip-compressed size of the file.")
    overwrite: bool = option(False, "Replace an existing edgecompress artifact of this format at "
                                    "the path (atomically; anything else there is never replaced).")

    def __post_init__(self) -> None:
        validate_options(self)


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
        from ..runtime import load

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


class Exporter:
    """Turns a DeployableModel into one format's artifact.

    Subclasses set ``Options`` (an :class:`ExportOptions` subclass) and implement
    :meth:`write`; the base class validates options, decides the precision honestly, writes
    atomically, stores metadata, and verifies the artifact through the format's Runner.
    """

    Options: ClassVar[type[ExportOptions]] = ExportOptions

    def __init__(self, spec: FormatSpec):
        self.spec = spec

    # -- to implement -----------------------------------------------------------------------------
    def write(self, dm: "DeployableModel", tmp: Path, opts: Any, precision: str,
              metadata: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        """Write the artifact at ``tmp`` (file or folder); return notes for the metadata."""
        raise NotImplementedError

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:  # pragma: no cover
        """Store ``metadata`` with the artifact (inside it, or beside it)."""
        raise NotImplementedError

    def float_precision(self, opts: Any) -> str:
        return "fp16" if getattr(opts, "fp16", False) else "fp32"

    # -- the export ---------------------------------------------------------------------------------
    def export(self, dm: "DeployableModel", path: Path, **options: Any) -> Artifact:
        opts = from_options(self.Options, options, where=f"export to {self.spec.name}")
        precision, fallback = self.decide_precision(dm, opts)
        self.check_path(path)
        replace = check_destination(path, self.spec.name, opts.overwrite)
        metadata = base_metadata(dm, self.spec.name, precision)
        if fallback:
            metadata["float_fallback"] = fallback
        # written, described and verified beside the destination; moved there only when all
        # of it succeeded, so a failure (parity with on_parity_fail="raise" too) changes nothing
        # native converters may abort the process on a full disk: refuse before they start
        ensure_free_space(path.parent, dm.needed_bytes(), f"exporting {self.spec.name}")
        with atomic_path(path, overwrite=replace) as tmp:
            with disk_full_is_clear(path):
                notes = self.write(dm, tmp, opts, precision, metadata) or {}
            metadata.update(notes)
            self.store_metadata(tmp, metadata)
            artifact = Artifact(tmp, self.spec.name, precision, path_size(tmp), metadata,
                                notes=dict(notes, **({"float_fallback": fallback} if fallback else {})))
            if opts.compressed:
                artifact.compressed_bytes = _compressed(tmp)
            if opts.verify:
                try:
                    self.verify(dm, artifact, opts)
                except ParityError as exc:  # name the destination, not the temporary
                    raise ParityError(f"{str(exc).replace(str(tmp), str(path))}; it was not "
                                      f"written (nothing at {path} changed)") from None
                self.store_metadata(tmp, artifact.metadata)
                artifact.size_bytes = path_size(tmp)  # the parity record adds a few bytes
        artifact.path = Path(path)
        log.info("exported %s", artifact)
        return artifact

    def check_path(self, path: Path) -> None:
        if self.spec.directory:
            if path.suffix:
                raise ConfigError(f"{self.spec.name} artifacts are folders; give a folder path "
                                  f"without a suffix, not {path}")
        elif path.suffix.lower() not in self.spec.suffixes:
            raise ConfigError(f"{self.spec.name} artifacts must end with "
                              f"{' or '.join(self.spec.suffixes)}; got {path}")

    def decide_precision(self, dm: "DeployableModel", opts: Any) -> tuple[str, str | None]:
        """The precision to write, refusing INT8 recipes this format cannot hold.

        Returns (precision, fallback note); the note is None unless a float fallback was
        explicitly allowed.
        """
        recipe = dm.quant_recipe
        if recipe is None:
            return self.float_precision(opts), None
        # weight-only recipes (QuantizeWeights) ask for their own precision, e.g. int4-weight
        wanted = {"static": "int8-static", "dynamic": "int8-dynamic"}.get(recipe.scheme,
                                                                          recipe.precision)
        if self.spec.supports(wanted):
            return recipe.precision, None
        able = [s.name for s in FORMATS.values() if s.supports(wanted)]
        if not opts.allow_float_fallback:
            kind = f"INT8 {recipe.scheme}" if wanted.startswith("int8-") else wanted
            raise ExportError(f"the model carries an {kind} recipe, which the "
                              f"{self.spec.name} format cannot hold here. Formats that can: "
                              f"{', '.join(able)}. To export float weights anyway pass "
                              f"allow_float_fallback=True (recorded in the artifact's metadata "
                              f"and the report)")
        note = f"INT8 {recipe.scheme} recipe not realised: {self.spec.name} holds float only here"
        log.warning("%s; exporting %s weights because allow_float_fallback=True", note,
                    self.float_precision(opts))
        return self.float_precision(opts), note

    def source_model(self, dm: "DeployableModel", precision: str) -> nn.Module:
        """The torch model to convert: the float model when a recipe is realised natively."""
        if dm.quant_recipe is not None and dm.float_model is not None:
            return dm.float_model
        return dm.model

    def reference_model(self, dm: "DeployableModel", precision: str) -> tuple[nn.Module, str]:
        """What parity is measured against: the simulated model for INT8, else the float model."""
        if precision.startswith("int8"):
            return dm.model, "simulated INT8 torch model"
        if dm.quant_recipe is not None and dm.float_model is not None:
            return dm.float_model, "float torch model (float fallback)"
        return dm.model, "torch model"

    def open_runner(self, path: Path, opts: Any) -> Runner:
        from ..runtime import load

        return load(path, threads=opts.threads)

    def verify(self, dm: "DeployableModel", artifact: Artifact, opts: Any) -> None:
        runner = self.open_runner(artifact.path, opts)
        try:
            reference, ref_name = self.reference_model(dm, artifact.precision)
            x = dm.sample_inputs(opts.parity_samples)
            artifact.parity = check_parity(runner, reference, x, artifact.precision, ref_name,
                                           opts.tolerance)
            if dm.data is not None:
                artifact.accuracy = artifact_accuracy(runner, dm.data, opts.accuracy_samples)
            if opts.benchmark_runs:
                artifact.latency = runner.benchmark(warmup=min(5, opts.benchmark_runs),
                                                    runs=opts.benchmark_runs, with_system=False)
        finally:
            runner.close()
        artifact.metadata["parity"] = artifact.parity.to_dict()
        artifact.metadata["accuracy"] = artifact.accuracy
        if not artifact.parity.passed:
            message = (f"PARITY CHECK FAILED for {artifact.path}: {artifact.parity}. The artifact "
                       f"does not reproduce its reference model within tolerance")
            if opts.on_parity_fail == "raise":
                raise ParityError(message)
            log.warning(message)


def _compressed(path: Path) -> dict[str, int]:
    if path.is_dir():
        data = b"".join(f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file())
    else:
        data = path.read_bytes()
    return compressed_sizes(data)
