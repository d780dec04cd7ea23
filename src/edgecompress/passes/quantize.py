"""Quantization passes: static INT8 (PTQ, QAT) and dynamic INT8.

Each pass returns a torch model that *simulates* the quantized model (so the pipeline measures
accuracy after quantization) and records a :class:`~edgecompress.quant_recipe.QuantRecipe` plus
the float model it started from on the context; every exporter then realises the recipe with its
format's own INT8 path (ONNX: ONNX Runtime's quantizer, see ``export/onnx_quant.py``) and
checks the artifact against the simulated model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..data.inputs import apply, batch_size, head
from ..errors import ConfigError, DataError
from ..fold import fold_batchnorm
from ..forms import Form
from ..options import option
from ..quant.calibrate import CalibrationResult, calibrate
from ..quant.dynamic import DYNAMIC_TYPES, dynamic_layers, quantize_dynamic_torch
from ..quant.mapping import execution_order
from ..quant.sharing import untraceable_parts
from ..quant.simulate import (W_QMAX, W_QMAX_REDUCED, act_quantizers, cpu_has_vnni,
                              layer_output_modes, output_modes,
                              quantizable_layers, ranges_of, resolve_skip, set_observing,
                              set_ranges, share_quantizers, unwrap, wrap)
from ..quant_recipe import DynamicRecipe, StaticRecipe
from ..training import FineTune, Recovery, steps_per_epoch
from .base import Pass, PassContext, StageOutput

if TYPE_CHECKING:
    from ..data.bundle import DataBundle

log = logging.getLogger("edgecompress")

REBUILD = "edgecompress.quant.simulate:rebuild"  # rebuilds the quantized model of a saved file
METHODS = ("minmax", "percentile", "entropy")


def _check_calibration(data: "DataBundle", samples: int, who: str) -> None:
    if data.calib is None:
        raise DataError(f"{who} needs calibration data: give DataBundle(calib=...) or train=... "
                        f"(calibration uses train batches when calib is not given)")
    data.calibration_inputs(samples)  # reads the samples now: NaN/Inf or emptiness fail here


def _static_layers(model: nn.Module, skip: tuple[str, ...], who: str) -> tuple[dict[str, nn.Module], set[str]]:
    layers = quantizable_layers(model)
    if not layers:
        raise ConfigError(f"{who}: {type(model).__name__} has no Conv or Linear layer to "
                          f"quantize statically; for LSTM/GRU/attention models use "
                          f"QuantizeDynamic")
    skipped = resolve_skip(model, skip, layers)
    if len(skipped) == len(layers):
        raise ConfigError(f"{who}: skip={list(skip)} keeps every quantizable layer in float; "
                          f"nothing would be quantized")
    return layers, skipped


def _static_recipe(p: Any, source: str, method: str, calib: Any,
                   sim: nn.Module, skipped: set[str], order: list[list[Any]],
                   ranges_kind: str, outputs: dict[str, str | None], shared: int,
                   calibrated: list[str] | None = None) -> StaticRecipe:
    return StaticRecipe(
        bits=8, per_channel=p.per_channel, method=method, backend=p.backend,
        skip=tuple(p.skip), source=source, calib_samples=apply(calib, lambda t: t.detach().cpu()),
        ranges=ranges_of(sim), skipped_layers=tuple(sorted(skipped)),
        layer_order=tuple(order), rebuild=REBUILD, ranges_kind=ranges_kind,
        outputs=dict(outputs or {}), weight_qmax=_weight_qmax(p),
        reduce_range=_weight_qmax(p) != W_QMAX, one_quantizer_per_tensor=shared,
        calibrated_after_training=calibrated, layers_only=not shared)


def _weight_qmax(p: Any) -> int:
    reduce = p.reduce_range
    if reduce is None:
        reduce = p.backend == "x86" and not cpu_has_vnni()
    return W_QMAX_REDUCED if reduce else W_QMAX


def _check_skip_type(p: Any) -> None:
    if isinstance(p.skip, str):
        raise ConfigError(f"{type(p).__name__}: skip must be a list of layer names, e.g. "
                          f"skip=['{p.skip}'], not a string")
    p.skip = tuple(p.skip)


@dataclass
class StaticQuantOptions:
    """The options post-training and quantization-aware static INT8 share, declared once."""

    samples: int = option(256, "Calibration samples taken from data.calib (QAT: for the "
                               "initial ranges).", low=1)
    method: str = option("percentile", "Calibration method for activation ranges (QAT: for "
                                       "the initial ranges).", choices=METHODS)
    per_channel: bool = option(True, "Quantize weights per output channel (else per tensor).")
    skip: tuple[str, ...] = option((), "Layer names kept in float (a container's name keeps "
                                       "all layers inside it), e.g. ['fc'].")
    backend: str = option("x86", "Target engine: x86 (u8 activations, s8 weights) or arm "
                                 "(s8 activations).", choices=("x86", "arm"))
    reduce_range: bool | None = option(None, "7-bit weights, which x86 CPUs without VNNI need "
                                             "to avoid int16 saturation in ORT's u8s8 kernels "
                                             "(None: on for x86 when this CPU lacks VNNI).")
    layers_only: bool = option(False, "Quantize only the Conv / Linear layers (weights, input, a "
                                      "Conv's output) and keep every op between them float (Add, "
                                      "Softmax, attention's matmuls); used anyway when torch.fx "
                                      "cannot trace the model. Try it when a graph-wide INT8 "
                                      "file fails its parity check.")


@dataclass
class QuantizePTQ(Pass, StaticQuantOptions):
    """Post-training static INT8: calibrate activation ranges, simulate INT8 in torch.

    BatchNorm is folded first (the exported graph has it folded). Activation ranges are found
    on ``samples`` inputs of ``data.calib`` with ONNX Runtime's own minmax / percentile /
    entropy algorithms; the samples go into the recipe so each exporter calibrates natively.
    """

    name = "quantize_ptq"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FAKEQUANT

    def validate(self) -> None:
        _check_skip_type(self)

    def check_data(self, data: "DataBundle") -> None:
        _check_calibration(data, self.samples, "QuantizePTQ")

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        float_model = copy.deepcopy(model).eval()
        folded = fold_batchnorm(float_model)
        layers, skipped = _static_layers(float_model, self.skip, "QuantizePTQ")
        calib = head(ctx.data.calibration_inputs(self.samples), self.samples)
        order = execution_order(float_model, calib, layers)
        sim, outputs, shared = _simulated(self, float_model, skipped)
        found = calibrate(sim, act_quantizers(sim), calib, self.method, desc="PTQ calibration")
        recipe = _static_recipe(self, "ptq", self.method, calib, sim, skipped, order,
                                "observed", outputs, shared)
        _note_static(ctx, layers, skipped, calib, folded)
        _note_calibration(ctx, found)
        _note_untraced(ctx, float_model, shared, self.layers_only)
        return StageOutput(sim.eval(), recipe=recipe, float_model=float_model)


def _note_calibration(ctx: PassContext, *found: CalibrationResult) -> None:
    """Tensors calibration left in float or could only partly observe go in the report."""
    merged: dict[str, Any] = {}
    for result in found:
        for key, value in result.notes().items():
            merged[key] = ({**merged[key], **value} if isinstance(value, dict)
                           else merged[key] + value) if key in merged else value
    for key, value in merged.items():
        ctx.note(key, value)


def _simulated(p: Any, float_model: nn.Module,
               skipped: set[str]) -> tuple[nn.Module, dict[str, str | None], int]:
    """The simulated model (uncalibrated), its layers' output modes and the quantizer-sharing
    version: what ORT's graph quantizes, traced by fx; each layer on its own with
    ``layers_only`` or when fx cannot trace the model (version 0)."""
    layers = set(quantizable_layers(float_model)) - skipped
    modes = layer_output_modes if p.layers_only else output_modes
    outputs = modes(float_model, layers)
    wrapped = wrap(copy.deepcopy(float_model).eval(), p.per_channel, skipped, outputs,
                   _weight_qmax(p))
    if p.layers_only:
        return wrapped, outputs, 0
    sim, shared = share_quantizers(wrapped)
    return sim, outputs, shared


def _note_untraced(ctx: PassContext, model: nn.Module, shared: int, layers_only: bool) -> None:
    """When torch.fx cannot follow the model, name the parts it cannot trace: there each layer
    is quantized on its own in the simulation, and the exports quantize the same (nothing
    between the layers); ``layers_only=True`` asks for that on purpose."""
    if layers_only:
        ctx.note("layers_only", True)
    elif not shared:
        parts = untraceable_parts(model)
        ctx.note("untraced_by_torch_fx", parts)
        log.warning("QuantizePTQ/QAT: torch.fx cannot trace %s; the simulated INT8 model "
                    "quantizes each layer on its own, and the exports quantize the same",
                    "; ".join(parts) or "the model")


def _note_static(ctx: PassContext, layers: dict[str, Any], skipped: set[str],
                 calib: Any, folded: int) -> None:
    ctx.note("quantized_layers", len(layers) - len(skipped))
    ctx.note("float_layers", sorted(skipped))
    ctx.note("calibration_samples", batch_size(calib))
    ctx.note("batchnorm_folded", folded)


class _QatSchedule:
    """Counts training steps through a forward pre-hook and freezes BatchNorm statistics and
    activation ranges at the configured epochs — whatever loop (fine-tune, distillation) trains."""

    def __init__(self, model: nn.Module, steps_per_epoch: int, bn_after: int | None,
                 observers_after: int | None):
        self.model, self.steps, self.step = model, max(1, steps_per_epoch), 0
        self.bn_after, self.observers_after = bn_after, observers_after
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.handle = model.register_forward_pre_hook(self)
        self.events: dict[str, int] = {}

    def __call__(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        epoch = self.step // self.steps
        self.step += 1
        if self.bn_after is not None and epoch >= self.bn_after:
            for bn in self.bns:  # eval mode: running statistics used and no longer updated
                bn.eval()
            self.events.setdefault("batchnorm_frozen_at_step", self.step)
        if self.observers_after is not None and epoch >= self.observers_after:
            set_observing(self.model, False)
            self.events.setdefault("ranges_frozen_at_step", self.step)

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class QuantizeQAT(Pass, StaticQuantOptions):
    """Quantization-aware training: fine-tune through simulated INT8 so the weights adapt.

    Ranges start from a calibration on ``data.calib`` and then follow a moving average of the
    training activations until ``freeze_observers_after`` epochs; BatchNorm statistics freeze
    after ``freeze_bn_after`` epochs. The learned ranges go into the recipe (the ONNX export
    writes them into the QDQ graph). ``finetune`` replaces the plain cross-entropy loop, e.g.
    ``ec.Distill.recover()`` to train against the model that entered the pass as teacher.
    """

    name = "quantize_qat"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FAKEQUANT

    epochs: int = option(2, "Training epochs (ignored when finetune is given: its own count).",
                         low=1)
    lr: float = option(1e-4, "Peak learning rate.", low=0, low_open=True)
    max_batches: int | None = option(None, "Cap on batches per epoch (quick runs).", low=1)
    freeze_bn_after: int | None = option(1, "Epochs after which BatchNorm statistics freeze "
                                            "(None: never).", low=0)
    freeze_observers_after: int | None = option(1, "Epochs after which activation ranges "
                                                   "freeze (None: never).", low=0)
    # the shared options (StaticQuantOptions); QAT's initial ranges default to min/max
    method: str = option("minmax", "Calibration method for activation ranges (QAT: for the "
                                   "initial ranges).", choices=METHODS)
    finetune: Recovery | None = option(None, "Training hook (e.g. ec.Distill.recover()); "
                                             "None: cross-entropy with epochs/lr above.")

    def validate(self) -> None:
        _check_skip_type(self)

    def trains_float_model(self) -> bool:
        return False  # low-lr fine-tuning of the fake-quant model: folded BatchNorm is the norm

    def check_data(self, data: "DataBundle") -> None:
        if data.train is None:
            raise DataError("QuantizeQAT trains: it needs labelled batches in DataBundle.train. "
                            "Without training data use QuantizePTQ")
        _check_calibration(data, self.samples, "QuantizeQAT")

    def _recovery(self) -> Recovery:
        if self.finetune is not None:
            return self.finetune
        return FineTune(epochs=self.epochs, lr=self.lr, max_batches=self.max_batches)

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        float_model = copy.deepcopy(model).eval()
        # per-channel symmetric weight quantization is unchanged by folding a BatchNorm (a
        # per-channel scale), so BN can train unfolded; per-tensor needs the folded weights
        folded = 0 if self.per_channel else fold_batchnorm(float_model)
        layers, skipped = _static_layers(float_model, self.skip, "QuantizeQAT")
        calib = head(ctx.data.calibration_inputs(self.samples), self.samples)
        sim = wrap(copy.deepcopy(float_model), self.per_channel, skipped, None, _weight_qmax(self))
        found = calibrate(sim, act_quantizers(sim), calib, self.method,
                          desc="QAT initial ranges")
        recovery = self._recovery()
        schedule = _QatSchedule(sim, steps_per_epoch(ctx.data.train, recovery), self.freeze_bn_after,
                                self.freeze_observers_after)
        set_observing(sim, True)
        try:
            sim = recovery.recover(sim, ctx, desc="QAT")
        finally:
            schedule.remove()
            set_observing(sim, False)
        sim.eval()
        trained_float = unwrap(sim)
        folded += fold_batchnorm(trained_float)
        final, outputs, calibrated, shared, late = self._final_model(trained_float, sim, skipped,
                                                                     calib)
        order = execution_order(trained_float, calib, quantizable_layers(trained_float))
        recipe = _static_recipe(self, "qat", self.method, calib, final, skipped, order, "learned",
                                outputs, shared, calibrated)
        _note_static(ctx, layers, skipped, calib, folded)
        _note_calibration(ctx, found, *late)
        _note_untraced(ctx, trained_float, shared, self.layers_only)
        ctx.note("qat_schedule", schedule.events)
        return StageOutput(final, recipe=recipe, float_model=trained_float)

    def _final_model(self, trained_float: nn.Module, trained: nn.Module, skipped: set[str],
                     calib: Any) -> tuple[nn.Module, dict[str, str | None], list[str], int,
                                                   tuple[CalibrationResult, ...]]:
        """The BN-folded simulated model with the learned ranges. Tensors that had no quantizer
        in training (a layer's output while a BatchNorm still followed it, a residual sum read
        only by pooling) are calibrated now on the float model, as ORT calibrates them."""
        final, outputs, shared = _simulated(self, trained_float, skipped)
        set_ranges(final, ranges_of(trained))
        missing = {n: q for n, q in act_quantizers(final).items() if not q.ready}
        late = (calibrate(final, missing, calib, self.method, desc="QAT output ranges"),) \
            if missing else ()
        return final.eval(), outputs, sorted(missing), shared, late


@dataclass
class QuantizeDynamic(Pass):
    """Dynamic INT8: int8 weights, activations quantized per batch at run time.

    For Linear / LSTM / GRU (transformers, RNNs); needs no calibration data. The torch model
    uses torch's dynamic quantized modules; ONNX uses ONNX Runtime's ``quantize_dynamic``.
    """

    name = "quantize_dynamic"
    accepts = (Form.TORCH_FLOAT,)
    produces = Form.TORCH_FAKEQUANT

    layers: tuple[str, ...] = option(("Linear", "LSTM", "GRU"), "Layer kinds to quantize.",
                                     choices=tuple(DYNAMIC_TYPES))
    skip: tuple[str, ...] = option((), "Layer names kept in float, e.g. ['classifier'].")

    def validate(self) -> None:
        _check_skip_type(self)
        if isinstance(self.layers, str):
            raise ConfigError(f"QuantizeDynamic: layers must be a list such as "
                              f"['{self.layers}'], not a string")
        self.layers = tuple(self.layers)
        if not self.layers:
            raise ConfigError("QuantizeDynamic: layers is empty; name at least one of "
                              f"{', '.join(DYNAMIC_TYPES)}")

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        float_model = copy.deepcopy(model).eval()
        layers = dynamic_layers(float_model, self.layers)
        if not layers:
            raise ConfigError(f"QuantizeDynamic: {type(model).__name__} has no "
                              f"{'/'.join(self.layers)} layer to quantize (dynamic INT8 "
                              f"quantizes those weights only); for convolutions use "
                              f"QuantizePTQ (static INT8)")
        skipped = resolve_skip(float_model, self.skip, layers)
        example = ctx.data.samples("val", 1)
        order = execution_order(float_model, example, layers)
        quantized = quantize_dynamic_torch(float_model, self.layers, skipped)
        recipe = DynamicRecipe(
            bits=8, method="minmax", skip=tuple(self.skip), layers=tuple(self.layers),
            skipped_layers=tuple(sorted(skipped)), layer_order=tuple(order),
            rebuild=REBUILD,
            # ORT's u8·s8 kernels saturate without VNNI: 7-bit weights there
            reduce_range=not cpu_has_vnni())
        ctx.note("quantized_layers", {k: sum(1 for n, m in layers.items() if type(m).__name__ == k
                                             and n not in skipped) for k in self.layers})
        ctx.note("float_layers", sorted(skipped))
        return StageOutput(quantized, recipe=recipe, float_model=float_model)
