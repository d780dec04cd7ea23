"""DeployableModel: the result of a pipeline, ready to export, save and reload safely."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from torch import nn

from . import ecm_file, registry
from ._version import __version__
from .ecm_file import ECM_FORMAT, ECM_VERSION, Builder, ExportedProgramModule
from .errors import ArtifactError, ExportError
from .forms import Form
from .data.inputs import apply, head, to_device
from .job import ExportJob
from .quant_recipe import QuantRecipe
from .report import Report
from .signature import InputSpec, Signature

if TYPE_CHECKING:
    from .artifact import Artifact
    from .data.bundle import DataBundle

log = logging.getLogger("edgecompress")


@dataclass
class DeployableModel:
    """A compressed model with everything an exporter needs.

    Attributes:
        model: the compressed ``torch.nn.Module`` (for INT8 recipes, the simulated model).
        input_spec: the input it takes.
        form: its form (float, fake-quantized, ONNX graph).
        report: the measured report (stages, then exported artifacts).
        history: one entry per pass, with the pass's options.
        quant_recipe: what a quantization pass decided (exporters realise it natively).
        float_model: the float model the quantization started from (exporters calibrate it).
        info: data facts carried into artifacts (classes, preprocessing).
        data: the DataBundle used (not saved; samples for parity checks).
    """

    model: nn.Module
    input_spec: InputSpec
    form: Form = Form.TORCH_FLOAT
    report: Report = field(default_factory=Report)
    history: list[dict[str, Any]] = field(default_factory=list)
    quant_recipe: QuantRecipe | None = None
    float_model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    data: "DataBundle | None" = None
    builder: str | None = None
    verified: bool | None = None  # loaded from a file whose sha256 records matched

    # -- use ------------------------------------------------------------------------------------
    def example_input(self, batch_size: int = 1) -> Any:
        """An input of the right shapes and dtypes — a tensor, or a tuple / dict of tensors for
        a model that takes several: real data when a bundle is attached, else zeros."""
        from .data.inputs import batch_size as size_of, repeat

        if self.data is not None and self.data.example_input is not None:
            x = self.data.example_input
            return repeat(x, batch_size) if batch_size != size_of(x) else x
        return self.input_spec.zeros(batch_size)

    def sample_inputs(self, n: int = 64) -> Any:
        """Up to ``n`` real inputs from the bundle's validation data (parity checks and latency
        use these); the structure of :meth:`example_input`."""
        if self.data is None:
            return self.example_input()
        return self.data.samples("val", n)

    def export(self, format: str, path: str | Path, **options: Any) -> "Artifact":
        """Export to ``format`` at ``path``; the artifact verifies itself through its runner.

        See :mod:`edgecompress.formats` for the formats and each exporter for its options.
        """
        spec = registry.formats.spec(format)
        exporter = registry.load_object(spec.exporter)(spec)
        plan = exporter.plan(self.quant_recipe, options)
        job = export_job(self, plan.precision, plan.opts.parity_samples)
        _check_named_inputs(job, spec.name)
        artifact = exporter.export(job, Path(path), plan)
        self.report.add_artifact(artifact.metrics())
        return artifact

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, builder: str | None = None, portable: bool = True,
             overwrite: bool = False, keep_samples: bool = False) -> Path:
        """Write an ``.ecm`` file: JSON manifest + tensors only, no pickled code.

        The file holds the manifest (input spec, history, report, structure, the quantization
        recipe's settings and ranges), the weights, the float weights of a quantized model and,
        with ``portable``, a ``torch.export`` program. The calibration samples a static INT8
        recipe was calibrated on are the user's data: they are kept only with
        ``keep_samples=True`` (needed to re-export static INT8 to ONNX or TensorRT from the
        reloaded file without attaching data again).

        The structure of every layer (widths after pruning, fused layers) is recorded so
        :meth:`load` rebuilds the model from ``builder`` — a ``"module:function"`` that returns
        the *uncompressed* model — and loads the weights with ``weights_only=True``. With
        ``portable`` the model is also saved as a ``torch.export`` program, which reloads
        without any builder (as an inference ``GraphModule``). The manifest records the sha256
        of every member. An existing ``.ecm`` at ``path`` is replaced (atomically) only with
        ``overwrite=True``; any other existing file or folder is never replaced.
        """
        fields = {**saved_fields(self), "builder": builder or self.builder}
        return ecm_file.write(path, self.model, self.float_model, self.quant_recipe, fields,
                              self.example_input() if portable else None,
                              overwrite=overwrite, keep_samples=keep_samples)

    @classmethod
    def load(cls, path: str | Path, builder: Builder | str | None = None,
             verify: bool = True) -> "DeployableModel":
        """Read an ``.ecm`` file; nothing in it can run code.

        The members are checked first (allow-list, size caps, the sha256 recorded at save time;
        ``verify=False`` loads a file without records, with a warning). The model is rebuilt
        from ``builder`` when the caller passes one; a builder *named in the file* is imported
        only if it is defined in ``edgecompress.models``. Otherwise the model comes from the
        saved ``torch.export`` program, checked to hold only raw tensors and JSON. Weights load
        with ``torch.load(weights_only=True)``.
        """
        saved = ecm_file.read(path, builder, verify)
        try:
            return cls._from_saved(saved)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ArtifactError(f"{path}: the manifest is malformed ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); the file is corrupt or crafted") from exc

    @classmethod
    def _from_saved(cls, saved: "ecm_file.SavedModel") -> "DeployableModel":
        m = saved.manifest
        return cls(model=saved.model, input_spec=saved.input_spec,
                   form=Form(m.get("form", Form.TORCH_FLOAT.value)),
                   report=Report.from_dict(m.get("report", {})),
                   history=list(m.get("history", [])), quant_recipe=saved.recipe,
                   float_model=saved.float_model, info=dict(m.get("info", {})),
                   builder=m.get("builder"), verified=saved.verified)

    def needed_bytes(self) -> int:
        """Free space writing this model needs (its weights a few times over, plus a margin)."""
        return ecm_file.needed_bytes(self.model, self.float_model)

    def copy(self) -> "DeployableModel":
        """A deep copy (model, float model, recipe, report)."""
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        inputs = {t.name: tuple(t.shape) for t in self.input_spec.all}
        shown = self.input_spec.shape if len(inputs) == 1 else inputs
        return (f"DeployableModel({type(self.model).__name__}, input={shown}, "
                f"form={self.form.value}, stages={len(self.report.stages)}, "
                f"recipe={self.quant_recipe.precision if self.quant_recipe else None})")


# -- the job an exporter receives: every choice about models, samples and calibration, made once --
CALIBRATION_FALLBACK = 256  # samples drawn from the bundle when a static recipe carries none


def export_job(dm: DeployableModel, precision: str, parity_samples: int) -> ExportJob:
    """The job to export ``dm`` at ``precision`` (decided by the exporter from the recipe)."""
    realised = dm.quant_recipe is not None and precision.startswith(("int8", "int4"))
    recipe = dm.quant_recipe if realised else None
    source = dm.float_model if dm.quant_recipe is not None and dm.float_model is not None else dm.model
    if realised:
        kind = "weight-quantized" if precision.endswith("-weight") else "INT8"
        reference, name = dm.model, f"simulated {kind} torch model"
    elif dm.quant_recipe is not None and dm.float_model is not None:
        reference, name = dm.float_model, "float torch model (float fallback)"
    else:
        reference, name = dm.model, "torch model"
    example = to_device(head(dm.example_input(1), 1), "cpu")
    signature = Signature.of(dm.model, example, dm.input_spec.name, layout=dm.input_spec.layout)
    metadata = {**model_metadata(dm), "signature": signature.to_dict()}
    return ExportJob(
        source=source, reference=reference, reference_name=name, recipe=recipe,
        signature=signature, example=example,
        parity_inputs=to_device(dm.sample_inputs(parity_samples), "cpu"),
        eval_data=dm.data.val if dm.data is not None else None,
        calibration=_calibration(dm, recipe), metadata=MappingProxyType(metadata),
        saved=MappingProxyType(saved_fields(dm)), float_model=dm.float_model,
        tokenizer=getattr(dm.data, "tokenizer", None))


# formats whose exporters write every input with its name and dtype (ncnn's pnnx, ExecuTorch
# and TensorRT's profiles here take one input tensor)
NAMED_INPUT_FORMATS = ("onnx", "tflite", "torchscript", "openvino", "torch")


def _check_named_inputs(job: ExportJob, fmt: str) -> None:
    if job.several_inputs and fmt not in NAMED_INPUT_FORMATS:
        names = ", ".join(job.signature.input_names)
        raise ExportError(f"the model takes {len(job.signature.inputs)} named inputs ({names}) "
                          f"and the {fmt} exporter writes single-input models only; export to "
                          f"one of {', '.join(NAMED_INPUT_FORMATS)}")


def _calibration(dm: DeployableModel, recipe: QuantRecipe | None) -> Any:
    if recipe is None or recipe.scheme != "static":
        return None
    if recipe.calib_samples is not None:  # float inputs as float32; ids and masks keep their dtype
        return apply(recipe.calib_samples, lambda t: (t.float() if t.is_floating_point() else t)
                     .detach().cpu())
    if dm.data is None:
        return None
    log.warning("the INT8 recipe carries no calibration samples; calibrating on %d samples of "
                "the attached DataBundle", CALIBRATION_FALLBACK)
    return dm.data.calibration_inputs(CALIBRATION_FALLBACK)


def model_metadata(dm: DeployableModel) -> dict[str, Any]:
    """The fields every artifact carries; the exporter adds ``format`` and ``precision``."""
    # the per-tensor ranges stay in the .ecm manifest; the artifact holds them as scales
    recipe = dm.quant_recipe.to_metadata(compact=True) if dm.quant_recipe else None
    return {
        "edgecompress_version": __version__,
        "input": dm.input_spec.to_dict(),
        "num_classes": dm.info.get("num_classes"),
        "class_names": dm.info.get("class_names"),
        "preprocess": dm.info.get("preprocess"),
        "detection": dm.info.get("detection"),
        "quant_recipe": recipe,
        "history": [h.get("pass") for h in dm.history],
    }


def saved_fields(dm: DeployableModel) -> dict[str, Any]:
    """The ``.ecm`` manifest fields of ``dm`` besides its weights."""
    return {"form": dm.form.value, "input_spec": dm.input_spec.to_dict(), "history": dm.history,
            "report": dm.report.to_dict(), "info": dm.info, "builder": dm.builder}



__all__ = ["ECM_FORMAT", "ECM_VERSION", "DeployableModel", "ExportedProgramModule", "InputSpec", "export_job"]
