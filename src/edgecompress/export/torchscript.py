"""TorchScript-mobile exporter: a ``.ptl`` file for PyTorch's lite interpreter.

Float models are traced (scripted when tracing fails). INT8 recipes are realised with torch's
own quantized kernels, which the lite interpreter runs:

* static — FX graph mode (``prepare_fx`` / ``convert_fx``, torch.ao): it fuses conv-bn-relu,
  quantizes residual additions without hand-inserted ``FloatFunctional`` modules, takes a
  per-channel or per-tensor qconfig for the engine (``x86`` on x86, ``qnnpack`` on ARM) and
  calibrates on the recipe's samples. Eager-mode quantization would need every ``+`` in the
  model rewritten as ``FloatFunctional``; FX does that from the graph, and a model FX cannot
  trace is refused with an error instead of being half-quantized.
* dynamic — ``torch.ao.quantization.quantize_dynamic`` on the recipe's layer types.

torch marks these ``torch.ao.quantization`` APIs and the lite interpreter deprecated (in favour
of torchao / ExecuTorch) but they work in this torch; the warnings are silenced here.
``optimize_for_mobile`` needs a torch built with XNNPACK; when it is absent the artifact's
metadata says it was skipped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from ..errors import ExportError
from ..metadata import write_sidecar
from ..options import option
from ..fold import fold_batchnorm
from ..job import ExportJob
from ..signature import Signature
from .base import Exporter, ExportOptions
from .flat import graph_model

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")

ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")
_DYNAMIC_TYPES = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell,
                  "GRUCell": nn.GRUCell, "RNNCell": nn.RNNCell}


@dataclass
class TorchScriptOptions(ExportOptions):
    engine: str | None = option(None, "Quantized engine for INT8 (None: from the recipe's "
                                      "backend — x86 for x86, qnnpack for arm). It must match "
                                      "the device: qnnpack is slow on x86.", choices=ENGINES)
    method: str = option("auto", "How to capture the model: trace, script, or auto (trace; script when tracing fails).",
                         choices=("auto", "trace", "script"))
    optimize: bool = option(True, "Run optimize_for_mobile when this torch has XNNPACK.")


@contextlib.contextmanager
def quantized_engine(engine: str | None) -> Iterator[None]:
    """Set torch's quantized engine for the block (packed weights depend on it)."""
    if engine is None:
        yield
        return
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise ExportError(f"this torch has no '{engine}' quantized engine (it has "
                          f"{', '.join(e for e in supported if e != 'none')}); pass engine= one "
                          f"of those, or export on a machine whose torch has '{engine}'")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def engine_for(recipe: "QuantRecipe", requested: str | None) -> str:
    if requested:
        return requested
    return "qnnpack" if recipe.backend == "arm" else "x86"


def seven_bit_activations(recipe: "QuantRecipe", engine: str) -> bool:
    """fbgemm/x86 kernels need 7-bit activations on CPUs without VNNI to avoid overflow; the
    recipe's ``reduce_range`` (set by the user, or on when the quantizing CPU lacks VNNI)
    decides, as it does for ORT's weights."""
    return engine in ("x86", "fbgemm") and recipe.reduce_range


def _qconfig_mapping(recipe: "QuantRecipe", engine: str, skipped: list[str]) -> Any:
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
    )

    reduce_range = seven_bit_activations(recipe, engine)
    act_cls = MinMaxObserver if recipe.method == "minmax" else HistogramObserver
    activation = act_cls.with_args(dtype=torch.quint8, reduce_range=reduce_range)
    if recipe.per_channel:
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                    qscheme=torch.per_channel_symmetric)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    mapping = get_default_qconfig_mapping(engine).set_global(QConfig(activation, weight))
    for name in skipped:
        mapping.set_module_name(name, None)
    return mapping


def quantize_static_fx(model: nn.Module, recipe: "QuantRecipe", engine: str,
                       calib: torch.Tensor, skipped: list[str]) -> tuple[nn.Module, int]:
    """Static INT8 with torch.ao FX graph mode, calibrated on ``calib``, then given the
    recipe's activation ranges where it has them; also returns how many ranges came from it."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(model).eval().cpu()
    try:
        prepared = prepare_fx(model, _qconfig_mapping(recipe, engine, skipped), (calib[:1],))
    except Exception as exc:  # noqa: BLE001 - symbolic tracing fails in many ways
        raise ExportError(f"torch.fx cannot trace {type(model).__name__} for static INT8 "
                          f"TorchScript ({str(exc)[:400]}); FX needs a forward without "
                          f"data-dependent Python control flow. The same recipe exports to "
                          f"'onnx' and 'tflite', which quantize a torch.export graph") from exc
    with torch.no_grad():
        for i in range(0, calib.shape[0], 32):
            prepared(calib[i:i + 32])
    imported = import_recipe_ranges(prepared, recipe.ranges)
    return convert_fx(prepared), imported


def _recipe_range(node: Any, ranges: dict[str, Any]) -> tuple[float, float] | None:
    """The recipe's range for the tensor an FX observer ``node`` watches.

    The producing layer's ``:out`` range wins (with a fused ReLU it is the post-ReLU range, as
    FX's fused module outputs); otherwise the union of the ``:in`` ranges of the layers reading
    the tensor (a residual sum feeding two convolutions)."""
    producer = node.args[0] if node.args else None
    if getattr(producer, "op", None) == "call_module" and f"{producer.target}:out" in ranges:
        lo, hi = ranges[f"{producer.target}:out"]
        return float(lo), float(hi)
    ins = [ranges[f"{u.target}:in"] for u in node.users
           if u.op == "call_module" and f"{u.target}:in" in ranges]
    if not ins:
        return None
    return min(float(r[0]) for r in ins), max(float(r[1]) for r in ins)


def import_recipe_ranges(prepared: Any, ranges: dict[str, Any]) -> int:
    """Give FX's activation observers the recipe's calibrated (or QAT-learned) ranges.

    Re-observing with torch's own observers found different ranges than the simulated model
    (HistogramObserver is not the recipe's percentile), so the .ptl disagreed with the
    simulation more than ONNX did. Each observer the recipe covers becomes a MinMaxObserver
    holding the recipe's range; the rest keep what calibration found. Returns how many."""
    from torch.ao.quantization.observer import MinMaxObserver, ObserverBase

    count = 0
    for node in prepared.graph.nodes:
        observer = getattr(prepared, str(node.target), None) if node.op == "call_module" else None
        if not isinstance(observer, ObserverBase) or observer.dtype != torch.quint8:
            continue
        found = _recipe_range(node, ranges)
        if found is None:
            continue
        fixed = MinMaxObserver(dtype=observer.dtype, qscheme=observer.qscheme,
                               quant_min=observer.quant_min, quant_max=observer.quant_max)
        fixed.min_val, fixed.max_val = torch.tensor(found[0]), torch.tensor(found[1])
        setattr(prepared, str(node.target), fixed)
        count += 1
    return count


def quantize_dynamic_torch(model: nn.Module, recipe: "QuantRecipe",
                           skipped: list[str]) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    kinds = recipe.layers or ("Linear", "LSTM", "GRU")
    unknown = [k for k in kinds if k not in _DYNAMIC_TYPES]
    if unknown:
        raise ExportError(f"the dynamic recipe names {', '.join(unknown)}, which torch's "
                          f"dynamic quantization does not cover (it covers "
                          f"{', '.join(_DYNAMIC_TYPES)})")
    types = {_DYNAMIC_TYPES[k] for k in kinds}
    names = {n for n, m in model.named_modules() if type(m) in types and n not in skipped}
    return quantize_dynamic(copy.deepcopy(model).eval().cpu(), names, dtype=torch.qint8)


def int8_weight_count(model: nn.Module) -> int:
    """Modules whose weight is stored as qint8 (what makes the file really INT8)."""
    count = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w) and not isinstance(w, nn.Parameter):
            try:
                tensors = w()
            except (RuntimeError, TypeError):
                continue
            first = tensors[0] if isinstance(tensors, (list, tuple)) else tensors
            count += int(isinstance(first, torch.Tensor) and first.dtype == torch.qint8)
        elif type(m).__name__ in ("LSTM", "GRU") and "dynamic" in type(m).__module__:
            count += 1
    return count


def fold_conv_bn(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with eval-mode BatchNorm folded into the preceding conv/linear."""
    folded = copy.deepcopy(model).eval()
    return folded, fold_batchnorm(folded)


def to_torchscript(model: nn.Module, example: Any, method: str,
                   signature: Signature | None = None) -> tuple[Any, str]:
    """Trace (or script) ``model``; return the ScriptModule and how it was made. A model that
    takes several inputs or gives structured outputs is traced through
    :class:`~edgecompress.export.flat.FlatModule` (positional inputs, a flat tuple out)."""
    errors = []
    signature = signature or Signature.of(model, example)
    if len(Signature.of(model, example).outputs) != len(signature.outputs):
        # a detector's list of per-image dicts: a trace would fix the number of images
        raise ExportError(f"{type(model).__name__} gives one set of outputs per image (a list "
                          f"of {len(signature.outputs)} tensors for one image, more for more), "
                          f"which a TorchScript trace would fix to the traced batch; export "
                          f"it to 'onnx', which keeps the detector's outputs per image")
    traced, args = graph_model(model, example, signature)
    for how in (("trace", "script") if method == "auto" else (method,)):
        try:
            with torch.no_grad():
                if how == "trace":
                    return torch.jit.trace(traced, args, check_trace=False), how
                return torch.jit.script(model), how
        except Exception as exc:  # noqa: BLE001 - both raise many kinds of errors
            errors.append(f"{how}: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}")
    raise ExportError(f"TorchScript could not capture {type(model).__name__} "
                      f"({'; '.join(errors)}). Make the forward traceable (tensor-only inputs "
                      f"and outputs) or scriptable, or export to 'onnx' / 'tflite'")


def optimize(script: Any, wanted: bool) -> tuple[Any, str]:
    if not wanted:
        return script, "skipped: optimize=False"
    import torch.backends.xnnpack

    if not torch.backends.xnnpack.enabled:
        return script, (f"skipped: this torch build ({torch.__version__}) has no XNNPACK, "
                        f"which optimize_for_mobile requires")
    from torch.utils.mobile_optimizer import optimize_for_mobile

    return optimize_for_mobile(script), "applied"


class TorchScriptExporter(Exporter):
    """Writes ``.ptl`` lite-interpreter files; options in :class:`TorchScriptOptions`."""

    Options = TorchScriptOptions

    def float_precision(self, opts: Any) -> str:
        return "fp32"

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        model = job.source.eval().cpu()
        example = job.example_batch(2)
        recipe = job.recipe
        if precision == "int8-static" and job.several_inputs:
            raise ExportError("static INT8 TorchScript of a model with several inputs is not "
                              "supported (torch.ao's FX calibration takes one input tensor); "
                              "export it to 'onnx' or 'tflite' (static INT8 with every named "
                              "input), or quantize with QuantizeDynamic")
        notes: dict[str, Any] = {"torch": torch.__version__, "machine": platform.machine()}
        engine = engine_for(recipe, opts.engine) if precision.startswith("int8") else None
        with warnings.catch_warnings(), quantized_engine(engine):
            warnings.simplefilter("ignore")  # torch.ao / lite-interpreter deprecation notices
            if precision.startswith("int8"):
                assert recipe is not None
                model, qnotes = self._quantize(model, recipe, engine, job.calibration, precision)
                notes.update(qnotes)
            else:
                model, notes["conv_bn_folded"] = fold_conv_bn(model)
            script, notes["capture"] = to_torchscript(model, example, opts.method, job.signature)
            script, notes["optimize_for_mobile"] = optimize(script, opts.optimize)
            script._save_for_lite_interpreter(str(tmp))
        if "skipped" in notes["optimize_for_mobile"]:
            log.info("optimize_for_mobile %s", notes["optimize_for_mobile"])
        return notes

    def _quantize(self, model: nn.Module, recipe: "QuantRecipe", engine: str | None,
                  calib: torch.Tensor | None, precision: str) -> tuple[nn.Module, dict[str, Any]]:
        skipped = list(recipe.skipped_layers or recipe.skip)
        imported = None
        if precision == "int8-static":
            if calib is None or calib.shape[0] == 0:
                raise ExportError("static INT8 TorchScript needs calibration samples; the recipe "
                                  "has none and no DataBundle is attached")
            assert engine is not None
            quantized, imported = quantize_static_fx(model, recipe, engine, calib.float().cpu(),
                                                     skipped)
            seven_bit = seven_bit_activations(recipe, engine)
            how = (f"torch.ao FX static: {'per-channel' if recipe.per_channel else 'per-tensor'} "
                   f"int8 weights, {imported} activation ranges from the recipe, the others from "
                   f"{'min/max' if recipe.method == 'minmax' else 'histogram'} observers"
                   f"{' (7-bit activations: reduce_range)' if seven_bit else ''}"
                   f", calibrated on {calib.shape[0]} samples")
        else:
            quantized = quantize_dynamic_torch(model, recipe, skipped)
            how = "torch.ao quantize_dynamic: int8 weights, activations quantized per call"
        n_int8 = int8_weight_count(quantized)
        if not n_int8:
            raise ExportError(f"torch quantization left no int8 weight in "
                              f"{type(model).__name__} for the {precision} recipe; nothing was "
                              f"written. Check the recipe's layers / skip, or export to 'onnx'")
        return quantized, {"quant_engine": engine, "quantizer": how, "int8_layers": n_int8,
                           "float_layers": skipped, "recipe_ranges_imported": imported,
                           "deprecation": "torch.ao.quantization and the lite interpreter are "
                                          "deprecated upstream (torchao / ExecuTorch) but work "
                                          "in this torch"}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, json.loads(json.dumps(metadata, default=str)), [path])
