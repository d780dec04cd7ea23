"""The ``.ecm`` file: a JSON manifest plus tensors (``weights_only`` loading), never pickled code.

:meth:`edgecompress.DeployableModel.save` / ``load`` and the ``torch`` format's runner read and
write it here, so the runner does not need the DeployableModel.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import registry
from ._ecm_archive import (TRUSTED_REBUILD_HOOKS, check_hashes, check_structure, checked_program,
                           member_hashes, parse_manifest, read_members, safe_tensors,
                           trusted_builder, version_ok)
from ._io import atomic_path, ensure_free_space
from ._version import __version__
from .data.inputs import is_inputs
from .errors import ArtifactError
from .metadata import check_destination
from .quant_recipe import QuantRecipe
from .signature import InputSpec
from .structure import apply_snapshot, snapshot

log = logging.getLogger("edgecompress")

ECM_FORMAT = "edgecompress-model"
ECM_VERSION = 1
Builder = Callable[[], nn.Module]


def write(path: str | Path, model: nn.Module, float_model: nn.Module | None,
          recipe: QuantRecipe | None, fields: dict[str, Any], example: torch.Tensor | None,
          overwrite: bool = False, keep_samples: bool = False) -> Path:
    """Write ``model`` (+ its float model and recipe) and the manifest ``fields`` to ``path``.

    With an ``example`` input the model is also saved as a ``torch.export`` program. The
    recipe's calibration samples (the user's data) are stored only with ``keep_samples``. The
    manifest records the sha256 of every member. An existing ``.ecm`` is replaced (atomically)
    only with ``overwrite``; any other existing file or folder never.
    """
    replace = check_destination(Path(path), "torch", overwrite)
    ensure_free_space(Path(path).parent, needed_bytes(model, float_model), "saving the model")
    manifest = {
        "format": ECM_FORMAT, "version": ECM_VERSION, "edgecompress_version": __version__,
        **fields, "structure": snapshot(model),
        "model_class": f"{type(model).__module__}:{type(model).__qualname__}",
        "quant_recipe": recipe.to_metadata() if recipe else None,
        "float_structure": snapshot(float_model) if float_model is not None else None,
    }
    files = _members(model, float_model, recipe, keep_samples)
    if example is not None:
        program, static_batch = _export_program(model, example)
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


def _members(model: nn.Module, float_model: nn.Module | None, recipe: QuantRecipe | None,
             keep_samples: bool) -> dict[str, bytes]:
    files = {"weights.pt": _tensor_bytes(_model_state(model, recipe))}
    if float_model is not None:
        files["float_weights.pt"] = _tensor_bytes(float_model.state_dict())
    if keep_samples and recipe is not None and recipe.calib_samples is not None:
        files["calib_samples.pt"] = _tensor_bytes({"x": recipe.calib_samples})
    return files


def needed_bytes(*models: nn.Module | None) -> int:
    """Free space writing ``models`` needs: their weights a few times over (the temporary,
    converters' intermediates, metadata) plus a margin."""
    weights = sum(t.numel() * t.element_size() for m in models if m is not None
                  for t in m.state_dict().values() if isinstance(t, torch.Tensor))
    return 3 * weights + (256 << 10)


@dataclass
class SavedModel:
    """What an ``.ecm`` file holds, rebuilt: the model, its float model and recipe, the manifest,
    its checked input spec and whether its sha256 records matched."""

    model: nn.Module
    float_model: nn.Module | None
    recipe: QuantRecipe | None
    manifest: dict[str, Any]
    input_spec: InputSpec
    verified: bool


def read(path: str | Path, builder: Builder | str | None = None,
         verify: bool = True) -> SavedModel:
    """Read an ``.ecm`` file; nothing in it can run code.

    The members are checked first (allow-list, size caps, the sha256 recorded at save time;
    ``verify=False`` loads a file without records, with a warning). The model is rebuilt from
    ``builder`` when the caller passes one; a builder *named in the file* is imported only if it
    is defined in ``edgecompress.models``. Otherwise the model comes from the saved
    ``torch.export`` program, checked to hold only raw tensors and JSON.
    """
    p = Path(path)
    manifest, blobs = _read_zip(p)
    verified = check_hashes(manifest, blobs, p, verify)
    try:
        return _from_checked(manifest, blobs, builder, p, verified)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ArtifactError(f"{p}: the manifest is malformed ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); the file is corrupt or crafted") from exc


def _from_checked(manifest: dict[str, Any], blobs: dict[str, bytes],
                  builder: Builder | str | None, p: Path, verified: bool) -> SavedModel:
    input_spec = InputSpec.checked(manifest.get("input_spec"), p)
    if builder is None:
        builder = trusted_builder(manifest.get("builder"), p)
    weights = safe_tensors(blobs["weights.pt"], p, "weights.pt")
    float_model = None
    if "float_weights.pt" in blobs and manifest.get("float_structure"):
        float_model = _rebuild_with_builder(builder, manifest["float_structure"],
                                            safe_tensors(blobs["float_weights.pt"], p,
                                                         "float_weights.pt"), p)
    recipe = None
    if manifest.get("quant_recipe"):
        calib = None
        if "calib_samples.pt" in blobs:
            calib = safe_tensors(blobs["calib_samples.pt"], p, "calib_samples.pt")["x"]
            if not is_inputs(calib):  # a tensor, or a tuple / dict of them (several inputs)
                raise ArtifactError(f"{p}: calib_samples.pt holds {type(calib).__name__}, not "
                                    f"model inputs; the file is corrupt or crafted")
        recipe = QuantRecipe.from_metadata(manifest["quant_recipe"], calib)
    model = _rebuild_from_recipe(recipe, float_model, weights)
    if model is None:
        model = _rebuild(manifest, weights, blobs, builder, p)
    return SavedModel(model.eval(), float_model, recipe, manifest, input_spec, verified)


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
        blobs = read_members(p)
    except OSError as exc:
        raise ArtifactError(f"{p} is not a readable .ecm file: {exc}") from exc
    manifest = parse_manifest(blobs.pop("manifest.json"), p)
    if manifest.get("format") != ECM_FORMAT or not version_ok(manifest.get("version"), ECM_VERSION):
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

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # a static program's guards reject any other batch size (not only in runners: also
        # dm.model(x) after DeployableModel.load), so run a bigger batch in pieces
        n = self.static_batch
        if len(args) != 1 or kwargs or n is None or args[0].shape[0] == n:
            return self.program(*args, **kwargs)
        return torch.cat([self.program(part) for part in args[0].split(n)])

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
    if hook not in TRUSTED_REBUILD_HOOKS:  # the name comes from the file: import ours only
        raise ArtifactError(f"refusing to rebuild the model with {hook!r}: only edgecompress's "
                            f"own rebuild functions ({', '.join(TRUSTED_REBUILD_HOOKS)}) are "
                            f"imported from a model file")
    return registry.load_object(hook)(float_model, recipe, weights)


def _tensor_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _export_program(model: nn.Module, example: Any) -> tuple[bytes | None, bool]:
    """Serialize ``model`` as a torch.export program (None when the model does not export),
    and whether the program only takes a batch of 1.

    The batch dimension is exported as dynamic (from a batch of 2: torch specialises size-1
    dimensions); a model that only works at one batch size falls back to a static export.
    """
    from .data.inputs import head, repeat

    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    attempts = [(*_export_args(repeat(example, 2), batch), False),
                (*_export_args(head(example, 1), None), True)]
    last: Exception | None = None
    for args, kwargs, dynamic, static in attempts:
        try:
            with torch.no_grad():
                ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)
            buf = io.BytesIO()
            torch.export.save(ep, buf)
            return buf.getvalue(), static
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds of errors
            last = exc
    log.info("model not saved as a torch.export program (%s); reloading it will need a builder",
             str(last).splitlines()[0][:200] if str(last) else type(last).__name__)
    return None, False


def _export_args(x: Any, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None, Any]:
    """``(args, kwargs, dynamic_shapes)`` for torch.export of model inputs ``x`` (a tensor, a
    tuple or a dict), with dimension 0 of every input dynamic when ``batch`` is given."""
    if isinstance(x, dict):
        return (), x, ({k: {0: batch} for k in x} if batch is not None else None)
    args = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    return args, None, (tuple({0: batch} for _ in args) if batch is not None else None)


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
