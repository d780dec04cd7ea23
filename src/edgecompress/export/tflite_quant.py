"""ai-edge-quantizer driven for the TFLite exporter: the recipe's scheme, skipped layers, fp16,
and the recipe's own activation ranges imported where the TFLite graph has the same tensor."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from .._extras import require
from ..data.inputs import batch_size, tensors
from ..errors import ExportError

if TYPE_CHECKING:
    from ..quant_recipe import QuantRecipe

log = logging.getLogger("edgecompress")

# ops whose second input is a weight tensor (what "int8 weights" means in a .tflite)
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
                 "CONV_3D", "BATCH_MATMUL", "EMBEDDING_LOOKUP")
# the ops a torch Conv / Linear becomes (a layers-only static recipe quantizes these alone)
_LAYER_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE")


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence litert-torch's console task log (edgecompress logs instead).

    ai-edge-quantizer's calibration bar cannot be switched off from outside (its calibrate()
    takes no flag, and tqdm reads TQDM_* variables only at import).
    """
    settings = {"LITERT_TORCH_SHOW_PROGRESS": "n"}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def inspect_tflite(path: Path) -> dict[str, Any]:
    """What the file really holds: IO dtypes/shapes, weight and kernel dtypes of weighted ops.

    A weight fed through a DEQUANTIZE op (fp16 weights) is reported with its stored dtype.
    """
    litert = require("ai_edge_litert.interpreter", "tflite", "Inspecting .tflite files")
    interp = litert.Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 - the only per-op view LiteRT's Python API has
    producer = {int(o): op for op in ops for o in op["outputs"]}
    weights: dict[str, int] = {}
    kernels: dict[str, int] = {}
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        if op["op_name"] not in _WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        w = int(op["inputs"][1])
        if w in producer and producer[w]["op_name"] == "DEQUANTIZE":
            w = int(producer[w]["inputs"][0])
        _bump(weights, np.dtype(tensors[w]["dtype"]).name)
        _bump(kernels, np.dtype(tensors[int(op["inputs"][0])]["dtype"]).name)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    return {"weight_dtypes": weights, "kernel_input_dtypes": kernels, "op_counts": counts,
            "io_dtypes": {"input": np.dtype(inp["dtype"]).name,
                          "output": np.dtype(out["dtype"]).name},
            "input_shape": [int(d) for d in inp["shape"]],
            "signature_inputs": _signature_inputs(interp)}


def _bump(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


def _signature_inputs(interp: Any) -> list[str]:
    sigs = interp.get_signature_list()
    return list(next(iter(sigs.values()))["inputs"]) if sigs else []


def _weighted_ops(path: Path) -> list[tuple[str, str]]:
    """(ai-edge-quantizer scope, weight tensor name) of each weighted op.

    The scope is the op's output tensor names joined and ended by ';' (how ai-edge-quantizer
    matches recipe regexes); the weight's name carries the torch module path even for the
    final op, whose output is named after the signature instead.
    """
    litert = require("ai_edge_litert.interpreter", "tflite", "Inspecting .tflite files")
    interp = litert.Interpreter(model_path=str(path))
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    return [(";".join(names[int(i)] for i in op["outputs"]) + ";", names[int(op["inputs"][1])])
            for op in interp._get_ops_details()  # noqa: SLF001
            if op["op_name"] in _WEIGHTED_OPS and len(op["inputs"]) > 1]


def skip_regex(module_name: str) -> str:
    """Regex for a torch module path in litert-torch tensor names.

    litert-torch names tensors after the module stack, e.g. ``layers.0.conv1`` appears as
    ``…Sequential_layers/…BasicBlock_0/…Conv2d_conv1``.
    """
    parts = [re.escape(p) for p in module_name.split(".")]
    return r"_" + r"/[^/;]*_".join(parts) + r"(?:;|/|$)"


class AiEdgeQuantizer:
    """Builds an ai-edge-quantizer recipe from a QuantRecipe (or fp16) and applies it."""

    def __init__(self, float_path: Path):
        self.aeq = require("ai_edge_quantizer", "tflite", "Quantizing TFLite models")
        from ai_edge_quantizer import qtyping, recipe_manager

        self.qtyping = qtyping
        self.float_path = float_path
        self.manager = recipe_manager.RecipeManager()
        self.notes: dict[str, Any] = {"quantizer": f"ai-edge-quantizer "
                                                   f"{dist_version('ai-edge-quantizer')}"}
        self.imported: dict[str, tuple[float, float]] | None = None  # None: not asked for

    def fp16(self) -> "AiEdgeQuantizer":
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        self.manager.add_weight_only_config(regex=".*", operation_name=self._all, num_bits=16,
                                            algorithm_key=AlgorithmName.FLOAT_CASTING)
        self.notes["quant_scheme"] = "fp16 weights (float casting), float32 compute"
        return self

    def recipe(self, recipe: "QuantRecipe", int8_io: bool) -> "AiEdgeQuantizer":
        granularity = (self.qtyping.QuantGranularity.CHANNELWISE if recipe.per_channel
                       else self.qtyping.QuantGranularity.TENSORWISE)
        if recipe.scheme == "static":
            # byom23: a recipe simulated layer by layer (fx could not trace the model) is
            # realised on the layers' ops only, the rest of the graph staying float as there
            ops = _LAYER_OPS if getattr(recipe, "layers_only", False) else (self._all,)
            for op in ops:
                self.manager.add_static_config(regex=".*", operation_name=op,
                                               activation_num_bits=8, weight_num_bits=recipe.bits,
                                               weight_granularity=granularity)
            self.notes["quant_scheme"] = ("static: int8 weights and activations, activation "
                                          "ranges from the recipe or calibrated on its samples")
            if not int8_io:
                self._keep_float_io()
        else:
            ops = _dynamic_ops(recipe.layers)
            for op in ops:
                self.manager.add_dynamic_config(regex=".*", operation_name=op,
                                                num_bits=recipe.bits, granularity=granularity)
            self.notes["quant_scheme"] = ("dynamic range: int8 weights, activations quantized "
                                          "at run time by LiteRT's kernels")
            self.notes["dynamic_ops"] = [str(getattr(o, "value", o)) for o in ops]
        skipped = tuple(recipe.skipped_layers or recipe.skip)
        if skipped:
            self._skip(skipped)
        self.notes["weight_granularity"] = "per-channel" if recipe.per_channel else "per-tensor"
        return self

    def import_ranges(self, model: torch.nn.Module, sample: torch.Tensor,
                      recipe: "QuantRecipe") -> None:
        """Use the recipe's activation ranges (calibrated or QAT-learned) where the TFLite
        graph has the same tensor; calibration fills in the rest."""
        from .tflite_ranges import recipe_tensor_ranges

        self.imported = (recipe_tensor_ranges(model, sample, self.float_path, recipe.ranges)
                         if recipe.ranges else {})

    @property
    def _all(self) -> Any:
        return self.qtyping.TFLOperationName.ALL_SUPPORTED

    def _keep_float_io(self) -> None:
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        for op in (self.qtyping.TFLOperationName.INPUT, self.qtyping.TFLOperationName.OUTPUT):
            self.manager.add_quantization_config(regex=".*", operation_name=op,
                                                 algorithm_key=AlgorithmName.NO_QUANTIZE)

    def _skip(self, names: tuple[str, ...]) -> None:
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        ops = _weighted_ops(self.float_path)
        for name in names:
            scopes = [scope for scope, weight in ops if re.search(skip_regex(name), weight)]
            if not scopes:
                raise ExportError(
                    f"the recipe keeps layer '{name}' in float, but no op of the TFLite graph "
                    f"can be traced back to it (litert-torch names weights after their module "
                    f"path). Export to 'onnx' or 'torchscript', which honour skip= for every "
                    f"layer, or quantize without skipping '{name}'")
            for scope in scopes:
                self.manager.add_quantization_config(
                    regex="^" + re.escape(scope), operation_name=self._all,
                    algorithm_key=AlgorithmName.NO_QUANTIZE)
        self.notes["float_layers"] = list(names)

    def _calibrate(self, samples: list[dict[str, np.ndarray]], threads: int) -> Any:
        """Activation ranges as the min/max over all samples.

        ai-edge-quantizer's default keeps a moving average (factor 0.95) of each sample's
        min/max; fed one image at a time (the converted graph has batch 1) that is about the
        *typical* image's range, so large logits were clipped: a pretrained CIFAR ResNet-20's
        top logit stopped at 13 where the float model gives 30, and top-1 agreement with the
        simulated INT8 model fell to 97.9 %. The recipe's own calibration (and ORT's) is a
        min/max over all samples; this matches it.
        """
        from ai_edge_quantizer import calibrator

        calib = calibrator.Calibrator(str(self.float_path), num_threads=threads,
                                      qsv_update_func=_widest_range)
        calib.calibrate({"serving_default": samples}, self.manager)
        return calib.get_model_qsvs()

    def run(self, out: Path, calib: Any, threads: int | None) -> dict[str, Any]:
        from ai_edge_quantizer import quantizer

        from .tflite_ranges import apply_ranges

        qt = quantizer.Quantizer(str(self.float_path))
        qt.load_quantization_recipe(self.manager.get_quantization_recipe())
        result = None
        try:
            if qt.need_calibration:
                if calib is None or batch_size(calib) == 0:
                    raise ExportError("static INT8 for TFLite needs calibration samples, but the "
                                      "recipe has none and no DataBundle is attached. Re-run the "
                                      "quantization pass with data")
                samples = signature_samples(self.float_path, calib)
                with quiet_tools():
                    result = self._calibrate(samples, threads or os.cpu_count() or 1)
                self.notes["calib_count"] = len(samples)
                self.notes.update(_ranges_note(
                    None if self.imported is None else apply_ranges(result, self.imported)))
            with quiet_tools():
                quantized = qt.quantize(result, enable_progress_report=False)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - ai-edge-quantizer raises many types
            raise ExportError(f"ai-edge-quantizer could not quantize the TFLite model: "
                              f"{str(exc)[:600]}. ONNX and TorchScript exports realise the same "
                              f"recipe with their own quantizers") from exc
        out.write_bytes(bytes(quantized.quantized_model))
        return self.notes


def signature_samples(path: Path, calib: Any) -> list[dict[str, np.ndarray]]:
    """One feed per sample (the converted graph has batch 1) by the file's signature input
    names in call order, each in the dtype the file takes: a model with several inputs gets
    every one (LiteRT narrows int64 ids and masks to int32)."""
    litert = require("ai_edge_litert.interpreter", "tflite", "Inspecting .tflite files")
    runner = litert.Interpreter(model_path=str(path)).get_signature_runner()
    details = runner.get_input_details()
    names = sorted(details, key=lambda n: int(m.group(1)) if (m := re.search(r"args_(\d+)", n))
                   else 0)
    values = tensors(calib)
    if len(values) != len(names):
        raise ExportError(f"the TFLite file takes {len(names)} inputs ({', '.join(names)}) but "
                          f"the calibration samples hold {len(values)}; give DataBundle(calib=...) "
                          f"batches with every input the model takes")
    arrays = [(n, v.numpy().astype(details[n]["dtype"])) for n, v in zip(names, values)]
    return [{n: a[i:i + 1] for n, a in arrays} for i in range(batch_size(calib))]


def _ranges_note(imported: int | None) -> dict[str, Any]:
    if imported is None:
        return {"activation_ranges": "min/max over all calibration samples (recipe_ranges=False)"}
    if not imported:
        return {"activation_ranges": "min/max over all calibration samples (the recipe has no "
                                     "ranges that the TFLite graph's tensors match)"}
    return {"activation_ranges": f"the recipe's for {imported} tensors, min/max over all "
                                 f"calibration samples for the rest",
            "recipe_ranges_imported": imported}


def _widest_range(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if not old:
        return new
    return {**old, "min": np.minimum(old["min"], new["min"]),
            "max": np.maximum(old["max"], new["max"])}


# torch layer types of a dynamic recipe → the TFLite ops litert-torch lowers them to
# (LSTM/GRU become matmuls, i.e. FULLY_CONNECTED / BATCH_MATMUL ops)
_DYNAMIC_OPS = {"Linear": ("FULLY_CONNECTED", "BATCH_MATMUL"),
                "LSTM": ("FULLY_CONNECTED", "BATCH_MATMUL"),
                "GRU": ("FULLY_CONNECTED", "BATCH_MATMUL"),
                "Conv2d": ("CONV_2D", "DEPTHWISE_CONV_2D"), "Conv1d": ("CONV_2D",)}


def _dynamic_ops(layers: tuple[str, ...]) -> list[Any]:
    from ai_edge_quantizer import qtyping

    if not layers:
        return [qtyping.TFLOperationName.ALL_SUPPORTED]
    unknown = [name for name in layers if name not in _DYNAMIC_OPS]
    if unknown:
        raise ExportError(f"the dynamic recipe quantizes {', '.join(unknown)}, which the TFLite "
                          f"export cannot map to LiteRT ops (it maps "
                          f"{', '.join(sorted(_DYNAMIC_OPS))}). Export to 'onnx' or "
                          f"'torchscript' instead")
    names = dict.fromkeys(op for name in layers for op in _DYNAMIC_OPS[name])
    return [qtyping.TFLOperationName(op) for op in names]


def dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
