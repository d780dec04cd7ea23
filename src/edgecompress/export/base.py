"""Exporter base class: decide the precision honestly, write atomically, verify, store metadata.

An exporter sees an :class:`~edgecompress.job.ExportJob` (never the DeployableModel) and gives
back an :class:`~edgecompress.artifact.Artifact`; the caller records it in the report.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .. import ecm_file
from .._io import atomic_path, disk_full_is_clear, ensure_free_space, path_size
from ..artifact import Artifact
from ..errors import ArtifactError, ConfigError, ExportError, ParityError
from ..job import ExportJob, artifact_metadata
from ..measure import compressed_sizes
from ..metadata import check_destination
from ..options import from_options, option, option_fields, validate_options
from ..registry import FormatSpec, formats
from ..runtime.base import Runner
from .failure import failure_advice, judge, mark_failed
from .tasks import TASKS
from .verify import Verification, verify

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")


@dataclass
class ExportOptions:
    """Options every exporter takes (format-specific exporters add their own)."""

    verify: bool = option(True, "Run the artifact through its Runner and record parity.")
    parity_samples: int = option(256, "Validation samples used for the parity check.", low=1)
    on_parity_fail: str = option("refuse", "What an artifact that fails verification does: "
                                 "refuse (not written, nothing at the path changes) or keep "
                                 "(written, marked FAIL in its metadata and the report; ec.load "
                                 "warns). raise and warn are the older names of refuse and keep.",
                                 choices=("refuse", "keep", "raise", "warn"))
    task: str = option("auto", "What the model does, for the task metric verification uses "
                               "(auto: inferred from the outputs).", choices=("auto", *TASKS))
    metric: Callable[..., float] | None = option(
        None, "Your metric(reference_outputs, artifact_outputs) -> float (dicts of named numpy "
              "outputs; higher is better), measured and reported; with metric_threshold it also "
              "decides the verdict.", recipe=False)
    metric_threshold: float | None = option(None, "Minimum of metric= for the artifact to pass "
                                                  "(None: reported only).")
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


@dataclass(frozen=True)
class ExportPlan:
    """The validated options and the precision an export will write (decided before the job)."""

    opts: Any
    precision: str
    fallback: str | None = None  # why an INT8 recipe is exported as float (allowed fallback)


class Exporter:
    """Turns an :class:`ExportJob` into one format's artifact.

    Subclasses set ``Options`` (an :class:`ExportOptions` subclass) and implement :meth:`write`
    and :meth:`store_metadata`; the base class validates options, decides the precision
    honestly, writes atomically, verifies the artifact through the format's Runner (given the
    metadata in memory) and then stores the metadata, parity included, once.
    """

    Options: ClassVar[type[ExportOptions]] = ExportOptions

    def __init__(self, spec: FormatSpec):
        self.spec = spec

    # -- to implement -----------------------------------------------------------------------------
    def write(self, job: ExportJob, tmp: Path, opts: Any,
              precision: str) -> dict[str, Any]:  # pragma: no cover - abstract
        """Write the artifact at ``tmp`` (file or folder); return notes for the metadata."""
        raise NotImplementedError

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:  # pragma: no cover
        """Store ``metadata`` with the artifact (inside it, or beside it)."""
        raise NotImplementedError

    def float_precision(self, opts: Any) -> str:
        return "fp16" if getattr(opts, "fp16", False) else "fp32"

    # -- the export ---------------------------------------------------------------------------------
    def plan(self, recipe: "QuantRecipe | None", options: dict[str, Any]) -> ExportPlan:
        """Validate ``options`` and decide the precision for a model carrying ``recipe``."""
        objects = {k: options[k] for k in python_objects(self.Options) if k in options}
        plain = {k: v for k, v in options.items() if k not in objects}
        opts = from_options(self.Options, plain, where=f"export to {self.spec.name}")
        if objects:  # callables, tokenizers: Python objects no recipe holds
            opts = dataclasses.replace(opts, **objects)
        precision, fallback = self.decide_precision(recipe, opts)
        return ExportPlan(opts, precision, fallback)

    def export(self, job: ExportJob, path: Path, plan: ExportPlan) -> Artifact:
        """Write, verify and describe the artifact of ``job`` at ``path``.

        It is written, described and verified beside the destination and moved there only when
        all of that succeeded, so a failure (a failed verification too, unless
        ``on_parity_fail="keep"``) changes nothing at ``path``.
        """
        self.check_path(path)
        replace = check_destination(path, self.spec.name, plan.opts.overwrite)
        # native converters may abort the process on a full disk: refuse before they start
        ensure_free_space(path.parent, ecm_file.needed_bytes(job.source, job.reference),
                          f"exporting {self.spec.name}")
        with atomic_path(path, overwrite=replace) as tmp:
            try:
                artifact = self._export_at(job, tmp, plan, path)
            except ParityError as exc:  # name the destination, not the temporary
                raise ParityError(f"{str(exc).replace(str(tmp), str(path))}; it was not "
                                  f"written (nothing at {path} changed)") from None
        artifact.path = Path(path)
        log.info("exported %s", artifact)
        return artifact

    def _export_at(self, job: ExportJob, tmp: Path, plan: ExportPlan, path: Path) -> Artifact:
        opts, precision = plan.opts, plan.precision
        with disk_full_is_clear(path):
            notes = self.write(job, tmp, opts, precision) or {}
        if plan.fallback:
            notes = {**notes, "float_fallback": plan.fallback}
        metadata = {**artifact_metadata(job.metadata, self.spec.name, precision), **notes}
        artifact = Artifact(tmp, self.spec.name, precision, 0, metadata, notes=dict(notes))
        checked: Verification | None = None
        try:
            if opts.verify:
                checked = self._checked(tmp, opts, metadata, job, precision, path)
                self.record(artifact, checked)
                if not judge(artifact, opts, self.failure_message(artifact)
                             + failure_advice(artifact, job.recipe)):
                    mark_failed(artifact)
        finally:  # stored once, also when verification fails, so the file describes itself
            self.store_metadata(tmp, artifact.metadata)
        artifact.size_bytes = path_size(tmp)
        if opts.compressed:
            artifact.compressed_bytes = _compressed(tmp)
        return artifact

    def _checked(self, tmp: Path, opts: Any, metadata: dict[str, Any], job: ExportJob,
                 precision: str, path: Path) -> Verification:
        """:meth:`check` of the fresh file; a file its own runner cannot run is refused."""
        try:
            return self.check(self.open_runner(tmp, opts, metadata), job, precision, opts)
        except ArtifactError as exc:
            raise ExportError(f"the {self.spec.name} {precision} file was written but its "
                              f"runner cannot run it on your samples, so it was not kept "
                              f"(nothing at {path} changed): "
                              f"{str(exc).replace(str(tmp), str(path))}. Try another precision "
                              f"or format, or keep the failing part in float (skip=[...])"
                              ) from exc

    def check(self, runner: Runner, job: ExportJob, precision: str, opts: Any) -> Verification:
        """Verify the fresh artifact through ``runner`` (closed afterwards): parity, accuracy,
        latency. A format for another task (e.g. GGUF language models) measures its own."""
        return verify(runner, job, precision, opts)

    def failure_message(self, artifact: Artifact) -> str:
        """What a failed parity check says (the artifact's path is the temporary's here)."""
        return (f"PARITY CHECK FAILED for {artifact.path}: {artifact.parity}. The artifact "
                f"does not reproduce its reference model within tolerance")

    def record(self, artifact: Artifact, checked: Verification) -> None:
        """Put what verification measured into the artifact and its metadata."""
        artifact.parity, artifact.accuracy, artifact.latency = (checked.parity, checked.accuracy,
                                                                checked.latency)
        artifact.metadata["parity"] = checked.parity.to_dict()
        artifact.metadata["accuracy"] = checked.accuracy
        if checked.perplexity is not None:
            artifact.perplexity = artifact.metadata["perplexity"] = checked.perplexity
        artifact.metadata.update(checked.records)
        artifact.notes.update(checked.records)

    def check_path(self, path: Path) -> None:
        if self.spec.directory:
            if path.suffix:
                raise ConfigError(f"{self.spec.name} artifacts are folders; give a folder path "
                                  f"without a suffix, not {path}")
        elif path.suffix.lower() not in self.spec.suffixes:
            raise ConfigError(f"{self.spec.name} artifacts must end with "
                              f"{' or '.join(self.spec.suffixes)}; got {path}")

    def decide_precision(self, recipe: "QuantRecipe | None", opts: Any) -> tuple[str, str | None]:
        """The precision to write, refusing INT8 recipes this format cannot hold.

        Returns (precision, fallback note); the note is None unless a float fallback was
        explicitly allowed.
        """
        if recipe is None:
            return self.float_precision(opts), None
        # weight-only recipes (QuantizeWeights) ask for their own precision, e.g. int4-weight
        wanted = {"static": "int8-static", "dynamic": "int8-dynamic"}.get(recipe.scheme,
                                                                          recipe.precision)
        if self.spec.supports(wanted):
            return recipe.precision, None
        if not opts.allow_float_fallback:
            kind = f"INT8 {recipe.scheme}" if wanted.startswith("int8-") else wanted
            raise ExportError(f"the model carries an {kind} recipe, which the "
                              f"{self.spec.name} format cannot hold here. Formats that can: "
                              f"{', '.join(formats.able(wanted))}. To export float weights "
                              f"anyway pass allow_float_fallback=True (recorded in the "
                              f"artifact's metadata and the report)")
        note = f"INT8 {recipe.scheme} recipe not realised: {self.spec.name} holds float only here"
        log.warning("%s; exporting %s weights because allow_float_fallback=True", note,
                    self.float_precision(opts))
        return self.float_precision(opts), note

    def open_runner(self, path: Path, opts: Any, metadata: dict[str, Any]) -> Runner:
        """The format's runner on the fresh artifact, given its metadata in memory (it is stored
        once, after verification)."""
        from ..registry import load_object

        return load_object(self.spec.runner)(path, threads=opts.threads, metadata=metadata)


def python_objects(options_cls: type) -> list[str]:
    """The options that take Python objects (``metric=``, a tokenizer): set after the plain
    options are read, as no recipe can hold them."""
    return [f.name for f, spec in option_fields(options_cls) if not spec.recipe]


def _compressed(path: Path) -> dict[str, int]:
    if path.is_dir():
        data = b"".join(f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file())
    else:
        data = path.read_bytes()
    return compressed_sizes(data)
