"""DeployableModel: the result of a pipeline, ready to export, save and reload safely."""

from __future__ import annotations

import copy
import io
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ._ecm_archive import (TRUSTED_REBUILD_HOOKS, check_hashes,
                           check_structure, checked_program, member_hashes, parse_manifest,
                           read_members, trusted_builder, version_ok)
from ._io import atomic_path
from ._version import __version__
from .errors import ArtifactError
from .forms import Form
from .quant_recipe import QuantRecipe
from .report import Report
from .structure import apply_snapshot, snapshot

if TYPE_CHECKING:
    from .data.bundle import DataBundle
    from .export.base import Artifact

log = logging.getLogger("edgecompress")

ECM_FORMAT = "edgecompress-model"
ECM_VERSION = 1
Builder = Callable[[], nn.Module]


@dataclass
class InputSpec:
    """Name, shape (with a batch of 1), dtype and layout of the model's input."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = "input"
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (JSON-safe)."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        """The spec from :meth:`to_dict`'s output."""
        return cls(shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                   name=d.get("name", "input"), layout=d.get("layout", "NCHW"))

    @classmethod
    def checked(cls, d: Any, path: Path) -> "InputSpec":
        """From a manifest's ``input_spec``, refusing shapes no real model takes (a crafted
        ``[1, 1e12]`` would otherwise allocate the example input)."""
        from .metadata import check_input_shape

        check_input_shape(d if isinstance(d, dict) else {"shape": None}, path)
        if str(d.get("dtype", "float32")) not in ("float32", "float16", "float64", "uint8", "int64"):
            raise ArtifactError(f"{path}: input_spec dtype {d.get('dtype')!r} is not supported")
        return cls.from_dict(d)

    @classmethod
    def from_tensor(cls, x: torch.Tensor, layout: str = "NCHW") -> "InputSpec":
        """The spec of an example input tensor (shape, dtype, layout)."""
        return cls(shape=(1, *x.shape[1:]), dtype=str(x.numpy().dtype) if x.device.type == "cpu"
                   else "float32", layout=layout)


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
    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """An input of the right shape: real data when a bundle is attached, else zeros."""
        if self.data is not None and self.data.example_input is not None:
            x = self.data.example_input
            return x.expand(batch_size, *x.shape[1:]).clone() if batch_size != x.shape[0] else x
        return torch.zeros((batch_size, *self.input_spec.shape[1:]))

    def sample_inputs(self, n: int = 64) -> torch.Tensor:
        """Up to ``n`` real inputs from the bundle's validation data (parity checks use these)."""
        if self.data is None:
            return self.example_input()
        return self.data.samples("val", n)

    def export(self, format: str, path: str | Path, **options: Any) -> "Artifact":
        """Export to ``format`` at ``path``; the artifact verifies itself through its runner.

        See :mod:`edgecompress.formats` for the formats and each exporter for its options.
        """
        from .formats import get_format
        from .plugins import load_object

        spec = get_format(format)
        exporter = load_object(spec.exporter)(spec)
        artifact = exporter.export(self, Path(path), **options)
        self.report.add_artifact(artifact.metrics())
        return artifact

    def needed_bytes(self) -> int:
        """Free space writing this model needs: its weights a few times over (the temporary,
        converters' intermediates, the float model, metadata) plus a margin."""
        models = [m for m in (self.model, self.float_model) if m is not None]
        weights = sum(t.numel() * t.element_size() for m in models
                      for t in m.state_dict().values() if isinstance(t, torch.Tensor))
        return 3 * weights + (256 << 10)

    def manifest_metadata(self) -> dict[str, Any]:
        """The facts every artifact's metadata carries (version, input, history, data info)."""
        return {"edgecompress_version": __version__, "input": self.input_spec.to_dict(),
                "history": [h.get("pass") for h in self.history], **self.info}

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
        from .metadata import check_destination

        from ._io import ensure_free_space

        replace = check_destination(Path(path), "torch", overwrite)
        ensure_free_space(Path(path).parent, self.needed_bytes(), "saving the model")
        builder = builder or self.builder
        manifest = {
            "format": ECM_FORMAT, "version": ECM_VERSION, "edgecompress_version": __version__,
            "form": self.form.value, "input_spec": self.input_spec.to_dict(),
            "history": self.history, "report": self.report.to_dict(), "info": self.info,
            "builder": builder, "structure": snapshot(self.model),
            "model_class": f"{type(self.model).__module__}:{type(self.model).__qualname__}",
            "quant_recipe": self.quant_recipe.to_metadata() if self.quant_recipe else None,
            "float_structure": snapshot(self.float_model) if self.float_model is not None else None,
        }
        files = {"weights.pt": _tensor_bytes(_model_state(self.model, self.quant_recipe))}
        if self.float_model is not None:
            files["float_weights.pt"] = _tensor_bytes(self.float_model.state_dict())
        if keep_samples and self.quant_recipe is not None \
                and self.quant_recipe.calib_samples is not None:
            files["calib_samples.pt"] = _tensor_bytes({"x": self.quant_recipe.calib_samples})
        if portable:
            program, static_batch = _export_program(self.model, self.example_input())
            if program is not None:
                files["program.pt2"] = program
                manifest["portable"] = True
                manifest["program_static_batch"] = static_batch
        manifest["sha256"] = member_hashes(files)
        with atomic_path(path, replace) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=str))
            for name, data in files.items():
                zf.writestr(name, data)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, builder: Builder | str | None = None,
             verify: bool = True) -> "DeployableModel":
        """Read an ``.ecm`` file; nothing in it can run code.

        The members are checked first (allow-list, size caps, the sha256 recorded at save time;
        ``verify=False`` loads a file without records, with a warning). The model is rebuilt
        from ``builder`` when the caller passes one; a builder *named in the file* is imported
        only if it is defined in ``edgecompress.models``. Otherwise
        the model comes from the saved ``torch.export`` program, checked to hold only raw
        tensors and JSON. Weights load with ``torch.load(weights_only=True)``.
        """
        p = Path(path)
        if not p.exists():
            raise ArtifactError(f"{p} does not exist")
        try:
            blobs = read_members(p)
        except OSError as exc:
            raise ArtifactError(f"{p} is not a readable .ecm file: {exc}") from exc
        manifest = parse_manifest(blobs.pop("manifest.json"), p)
        if manifest.get("format") != ECM_FORMAT or not version_ok(manifest.get("version"), ECM_VERSION):
            raise ArtifactError(f"{p}: unsupported model file (format {manifest.get('format')!r}, "
                                f"version {manifest.get('version')!r}); this edgecompress reads "
                                f"{ECM_FORMAT} up to version {ECM_VERSION}")
        verified = check_hashes(manifest, blobs, p, verify)
        try:
            return cls._from_checked(manifest, blobs, builder, p, verified)
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ArtifactError(f"{p}: the manifest is malformed ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); the file is corrupt or crafted") from exc

    @classmethod
    def _from_checked(cls, manifest: dict[str, Any], blobs: dict[str, bytes],
                      builder: Builder | str | None, p: Path, verified: bool) -> "DeployableModel":
        input_spec = InputSpec.checked(manifest.get("input_spec"), p)
        if builder is None:
            builder = trusted_builder(manifest.get("builder"), p)
        weights = _safe_tensors(blobs["weights.pt"], p, "weights.pt")
        float_model = None
        if "float_weights.pt" in blobs and manifest.get("float_structure"):
            float_model = _rebuild_with_builder(builder, manifest["float_structure"],
                                                _safe_tensors(blobs["float_weights.pt"], p,
                                                              "float_weights.pt"), p)
        recipe = None
        if manifest.get("quant_recipe"):
            calib = None
            if "calib_samples.pt" in blobs:
                calib = _safe_tensors(blobs["calib_samples.pt"], p, "calib_samples.pt")["x"]
            recipe = QuantRecipe.from_metadata(manifest["quant_recipe"], calib)
        model = _rebuild_from_recipe(recipe, float_model, weights)
        if model is None:
            model = _rebuild(manifest, weights, blobs, builder, p)
        return cls(model=model.eval(), input_spec=input_spec,
                   form=Form(manifest.get("form", Form.TORCH_FLOAT.value)),
                   report=Report.from_dict(manifest.get("report", {})),
                   history=list(manifest.get("history", [])), quant_recipe=recipe,
                   float_model=float_model, info=dict(manifest.get("info", {})),
                   builder=manifest.get("builder"), verified=verified)

    def copy(self) -> "DeployableModel":
        """A deep copy (model, float model, recipe, report)."""
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return (f"DeployableModel({type(self.model).__name__}, input={self.input_spec.shape}, "
                f"form={self.form.value}, stages={len(self.report.stages)}, "
                f"recipe={self.quant_recipe.precision if self.quant_recipe else None})")


class ExportedProgramModule(nn.Module):
    """An inference-only model reloaded from a ``torch.export`` program (no builder needed).

    The exported graph is frozen in eval mode, so ``train()``/``eval()`` only flip the flag.
    """

    def __init__(self, program_module: nn.Module, static_batch: int | None = None):
        super().__init__()
        self.program = program_module
        self.static_batch = static_batch  # larger batches run in calls of this size

    def forward(self, x: Any, *rest: Any) -> Any:
        # a static program's guards reject any other batch size (not only in runners: also
        # dm.model(x) after DeployableModel.load), so run a bigger batch in pieces
        n = self.static_batch
        if rest or n is None or x.shape[0] == n:
            return self.program(x, *rest)
        return torch.cat([self.program(part) for part in x.split(n)])

    def train(self, mode: bool = True) -> "ExportedProgramModule":
        self.training = mode
        return self


def _model_state(model: nn.Module, recipe: QuantRecipe | None) -> dict[str, Any]:
    """The state dict to save; a model rebuilt from its recipe keeps plain tensors only
    (torch's packed int8 modules hold objects ``weights_only`` loading refuses)."""
    state = model.state_dict()
    if recipe is None or not recipe.extra.get("rebuild"):
        return state
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not v.is_quantized}


def _rebuild_from_recipe(recipe: QuantRecipe | None, float_model: nn.Module | None,
                         weights: dict[str, Any]) -> nn.Module | None:
    """A quantized model rebuilt by the recipe's own hook from the float model (None: no hook)."""
    hook = recipe.extra.get("rebuild") if recipe is not None else None
    if not hook or float_model is None:
        return None
    if hook not in TRUSTED_REBUILD_HOOKS:  # the name comes from the file: import ours only
        raise ArtifactError(f"refusing to rebuild the model with {hook!r}: only edgecompress's "
                            f"own rebuild functions ({', '.join(TRUSTED_REBUILD_HOOKS)}) are "
                            f"imported from a model file")
    from .plugins import load_object

    return load_object(hook)(float_model, recipe, weights)


def _tensor_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _safe_tensors(data: bytes, path: Path, member: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError) as exc:
        raise ArtifactError(f"refused to load {path} ({member}): it holds something other than "
                            f"tensors (a pickled object that could run code) or is corrupt. "
                            f"Nothing from it was executed. Detail: {str(exc)[:300]}") from exc


def _export_program(model: nn.Module, example: torch.Tensor) -> tuple[bytes | None, bool]:
    """Serialize ``model`` as a torch.export program (None when the model does not export),
    and whether the program only takes a batch of 1.

    The batch dimension is exported as dynamic (from a batch of 2: torch specialises size-1
    dimensions); a model that only works at one batch size falls back to a static export.
    """
    model = model.eval()
    batch2 = torch.cat([example[:1], example[:1]])
    attempts = (((batch2,), ({0: torch.export.Dim("batch", min=1, max=4096)},)),
                ((example[:1],), None))
    last: Exception | None = None
    for args, dynamic in attempts:
        try:
            with torch.no_grad():
                ep = torch.export.export(model, args, dynamic_shapes=dynamic, strict=False)
            buf = io.BytesIO()
            torch.export.save(ep, buf)
            return buf.getvalue(), dynamic is None
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds of errors
            last = exc
    log.info("model not saved as a torch.export program (%s); reloading it will need a builder",
             str(last).splitlines()[0][:200] if str(last) else type(last).__name__)
    return None, False


def _load_program(data: bytes, path: Path, static_batch: bool = False) -> nn.Module:
    """Load the torch.export program after :func:`checked_program` proved it holds only raw
    tensors and JSON (torch would unpickle ``use_pickle`` members with ``weights_only=False``)."""
    checked = checked_program(data, path)
    try:
        return ExportedProgramModule(torch.export.load(io.BytesIO(checked)).module(),
                                     1 if static_batch else None)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: the saved torch.export program cannot be loaded by this "
                            f"torch ({torch.__version__}): {exc}") from exc


def _resolve_builder(builder: Builder | str | None) -> Builder | None:
    """A builder the *caller* passed (a callable, or a name the caller chose to import)."""
    if builder is None or callable(builder):
        return builder
    from .plugins import load_object

    try:
        return load_object(builder)
    except (ImportError, AttributeError) as exc:
        log.info("builder %s is not importable here (%s)", builder, exc)
        return None


def _rebuild_with_builder(builder: Builder | str | None, structure: dict[str, Any],
                          weights: dict[str, Any], path: Path) -> nn.Module | None:
    fn = _resolve_builder(builder)
    if fn is None:
        return None
    check_structure(structure, weights, path)
    model = fn()
    apply_snapshot(model, structure)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: the weights do not fit the model the builder made: "
                            f"{str(exc)[:500]}") from exc
    return model


def _rebuild(manifest: dict[str, Any], weights: dict[str, Any], blobs: dict[str, bytes],
             builder: Builder | str | None, path: Path) -> nn.Module:
    model = _rebuild_with_builder(builder, manifest["structure"], weights, path)
    if model is not None:
        return model
    if "program.pt2" in blobs:
        return _load_program(blobs["program.pt2"], path,
                             bool(manifest.get("program_static_batch", False)))
    raise ArtifactError(f"{path}: cannot rebuild the model: it was saved without a "
                        f"torch.export program and no builder is importable. Pass "
                        f"builder='package.module:function' (a function returning the "
                        f"uncompressed model) to DeployableModel.load")
