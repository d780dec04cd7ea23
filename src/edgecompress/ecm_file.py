"""The ``.ecm`` file: a JSON manifest plus tensors (``weights_only`` loading), never pickled code.

:meth:`edgecompress.DeployableModel.save` / ``load`` and the ``torch`` format's runner read and
write it here, so the runner does not need the DeployableModel.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import registry
from ._io import atomic_path
from ._version import __version__
from .errors import ArtifactError
from .quant_recipe import QuantRecipe
from .structure import apply_snapshot, snapshot

log = logging.getLogger("edgecompress")

ECM_FORMAT = "edgecompress-model"
ECM_VERSION = 1
Builder = Callable[[], nn.Module]


def write(path: str | Path, model: nn.Module, float_model: nn.Module | None,
          recipe: QuantRecipe | None, fields: dict[str, Any],
          example: torch.Tensor | None) -> Path:
    """Write ``model`` (+ its float model and recipe) and the manifest ``fields`` to ``path``.

    With an ``example`` input the model is also saved as a ``torch.export`` program.
    """
    manifest = {
        "format": ECM_FORMAT, "version": ECM_VERSION, "edgecompress_version": __version__,
        **fields, "structure": snapshot(model),
        "model_class": f"{type(model).__module__}:{type(model).__qualname__}",
        "quant_recipe": recipe.to_metadata() if recipe else None,
        "float_structure": snapshot(float_model) if float_model is not None else None,
    }
    files = {"weights.pt": _tensor_bytes(_model_state(model, recipe))}
    if float_model is not None:
        files["float_weights.pt"] = _tensor_bytes(float_model.state_dict())
    if recipe is not None and recipe.calib_samples is not None:
        files["calib_samples.pt"] = _tensor_bytes({"x": recipe.calib_samples})
    if example is not None:
        program, static_batch = _export_program(model, example)
        if program is not None:
            files["program.pt2"] = program
            manifest["portable"] = True
            manifest["program_static_batch"] = static_batch
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=str))
        for name, data in files.items():
            zf.writestr(name, data)
    return Path(path)


@dataclass
class SavedModel:
    """What an ``.ecm`` file holds, rebuilt: the model, its float model and recipe, the manifest."""

    model: nn.Module
    float_model: nn.Module | None
    recipe: QuantRecipe | None
    manifest: dict[str, Any]


def read(path: str | Path, builder: Builder | str | None = None) -> SavedModel:
    """Read an ``.ecm`` file without unpickling anything but tensors.

    The model is rebuilt from ``builder`` (argument, else the one recorded at save time) when
    it can be imported; otherwise from the saved ``torch.export`` program.
    """
    p = Path(path)
    manifest, blobs = _read_zip(p)
    weights = _safe_tensors(blobs["weights.pt"], p, "weights.pt")
    float_model = None
    if "float_weights.pt" in blobs and manifest.get("float_structure"):
        float_model = _rebuild_with_builder(builder or manifest.get("builder"),
                                            manifest["float_structure"],
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
    return SavedModel(model.eval(), float_model, recipe, manifest)


def runtime_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the ``torch`` format's runner reports as its metadata."""
    return {"edgecompress_version": manifest.get("edgecompress_version", __version__),
            "input": manifest["input_spec"],
            "history": [h.get("pass") for h in manifest.get("history", [])],
            **manifest.get("info", {})}


def _read_zip(p: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    if not p.exists():
        raise ArtifactError(f"{p} does not exist")
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            if "manifest.json" not in names or "weights.pt" not in names:
                raise ArtifactError(f"{p} is not an edgecompress model (.ecm): "
                                    f"manifest.json or weights.pt is missing")
            manifest = json.loads(zf.read("manifest.json"))
            blobs = {n: zf.read(n) for n in names if n != "manifest.json"}
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as exc:
        raise ArtifactError(f"{p} is not a readable .ecm file (truncated or corrupt?): "
                            f"{exc}") from exc
    if manifest.get("format") != ECM_FORMAT or int(manifest.get("version", 0)) > ECM_VERSION:
        raise ArtifactError(f"{p}: unsupported model file (format {manifest.get('format')!r}, "
                            f"version {manifest.get('version')!r}); this edgecompress reads "
                            f"{ECM_FORMAT} up to version {ECM_VERSION}")
    return manifest, blobs


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
    if recipe is None or not recipe.rebuild:
        return state
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not v.is_quantized}


def _rebuild_from_recipe(recipe: QuantRecipe | None, float_model: nn.Module | None,
                         weights: dict[str, Any]) -> nn.Module | None:
    """A quantized model rebuilt by the recipe's own hook from the float model (None: no hook)."""
    hook = recipe.rebuild if recipe is not None else None
    if not hook or float_model is None:
        return None
    if not str(hook).startswith("edgecompress."):  # the name comes from the file: import ours only
        raise ArtifactError(f"refusing to rebuild the model with {hook!r}: only edgecompress's "
                            f"own rebuild functions are imported from a model file")
    return registry.load_object(hook)(float_model, recipe, weights)


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
    """Load a torch.export program only after proving every pickle inside is tensors-only.

    ``torch.export.load`` retries with ``weights_only=False`` when a safe load fails; checking
    each member first with ``weights_only=True`` means that fallback can never run code.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if name.endswith(".pt"):
                _safe_tensors(zf.read(name), path, f"program.pt2/{name}")
    try:
        return ExportedProgramModule(torch.export.load(io.BytesIO(data)).module(),
                                     1 if static_batch else None)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: the saved torch.export program cannot be loaded by this "
                            f"torch ({torch.__version__}): {exc}") from exc


def _resolve_builder(builder: Builder | str | None) -> Builder | None:
    if builder is None or callable(builder):
        return builder
    try:
        return registry.load_object(builder)
    except (ImportError, AttributeError) as exc:
        log.info("builder %s is not importable here (%s)", builder, exc)
        return None


def _rebuild_with_builder(builder: Builder | str | None, structure: dict[str, Any],
                          weights: dict[str, Any], path: Path) -> nn.Module | None:
    fn = _resolve_builder(builder)
    if fn is None:
        return None
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
    model = _rebuild_with_builder(builder or manifest.get("builder"), manifest["structure"],
                                  weights, path)
    if model is not None:
        return model
    if "program.pt2" in blobs:
        return _load_program(blobs["program.pt2"], path,
                             bool(manifest.get("program_static_batch", False)))
    raise ArtifactError(f"{path}: cannot rebuild the model: it was saved without a "
                        f"torch.export program and no builder is importable. Pass "
                        f"builder='package.module:function' (a function returning the "
                        f"uncompressed model) to DeployableModel.load")
