"""Distill: knowledge distillation from a teacher into a student, and distillation recovery.

``Distill`` trains a student on ``α·CE + (1−α)·T²·KL`` of the teacher's softened outputs
(Hinton et al., 2015), optionally matching hint layers (FitNets). ``Distill.recover()`` gives
a :class:`DistillRecovery`, the ``finetune=`` of pruning and quantization passes that uses the
model that entered the pass as the teacher. Both train through
:func:`edgecompress.training.train`; only the loss differs from plain fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..data.bundle import same_batches
from ..data.text import is_text
from ..errors import ConfigError, DataError
from ..forms import Form
from ..losses import DistillLoss, FeatureTap, StudentWithAdapters, make_adapter
from ..options import option
from ..students import check_name
from ..training import (
    Recovery,
    TrainConfig,
    TrainResult,
    accuracy,
    cross_entropy_loss,
    train,
    train_config,
)
from .base import Pass, PassContext, StageOutput

if TYPE_CHECKING:
    from ..data.bundle import DataBundle

log = logging.getLogger("edgecompress")


def _check_hints(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not value:
        return "give a non-empty mapping {student_layer: teacher_layer}, or None"
    bad = [(k, v) for k, v in value.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        return f"layer names must be strings, got {bad[0]!r}"
    return None


def _check_student(value: Any) -> str | None:
    return check_name(value) if isinstance(value, str) else None


@dataclass
class KDConfig(TrainConfig):
    """Distillation options on top of the training loop's (shared by Distill and recovery)."""

    temperature: float = option(4.0, "Softmax temperature T of the soft targets.",
                                low=0, low_open=True)
    alpha: float = option(0.7, "Weight of the hard-label cross-entropy; 1 − alpha weighs the "
                               "teacher's soft targets.", low=0, high=1)
    hints: dict[str, str] | None = option(None, "Feature distillation: {student_layer: "
                                                "teacher_layer} pairs whose outputs are matched "
                                                "(MSE, 1×1 adapters when widths differ).",
                                          check=_check_hints)
    feature_weight: float = option(1.0, "Weight of the hint-layer loss.", low=0)


# -- the shared distillation step ------------------------------------------------------------------

def output_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Shape of ``model``'s output on ``x`` (eval mode, no grad; the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            out = model(x.to(device))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"Distill needs models that return one logits tensor; "
                          f"{type(model).__name__} returns {type(out).__name__}")
    return tuple(out.shape)


def check_pair(teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> None:
    """ConfigError unless teacher and student give logits of the same shape on ``example``."""
    if teacher is student:
        raise ConfigError("Distill: the teacher and the student are the same module; give a "
                          "separate student (or a student name such as 'mobilenet_v3_small')")
    t, s = output_shape(teacher, example[:1]), output_shape(student, example[:1])
    if t != s:
        raise ConfigError(f"Distill: the teacher outputs shape {t} but the student outputs "
                          f"{s}; both must give one logit per class (same number of classes)")
    if len(t) != 2:
        raise ConfigError(f"Distill: expected (batch, classes) logits, the models output {t}")


def check_models(teacher: nn.Module, student: nn.Module, data: "DataBundle") -> None:
    """The teacher/student check for ``data``: logits per class, or per token for text."""
    assert data.example_input is not None
    if is_text(data):
        from ..lm.distill import check_lm_pair
        check_lm_pair(teacher, student, data.example_input)
    else:
        check_pair(teacher, student, data.example_input)


def _with_adapters(student: nn.Module, teacher: nn.Module, hints: Mapping[str, str],
                   example: torch.Tensor) -> StudentWithAdapters:
    """Probe both models once to size the adapters, then wrap student and adapters together."""
    s_tap = FeatureTap(student, list(hints), "student")
    t_tap = FeatureTap(teacher, list(hints.values()), "teacher")
    try:
        output_shape(student, example[:1])
        output_shape(teacher, example[:1])
        adapters = {s: make_adapter(s_tap.outputs[s], t_tap.outputs[t], f"{s}→{t}")
                    for s, t in hints.items()}
    finally:
        s_tap.remove()
        t_tap.remove()
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    return StudentWithAdapters(student, adapters).to(device)


@contextlib.contextmanager
def _teacher_restored(teacher: nn.Module) -> Iterator[None]:
    """Put the teacher back on its device and in its mode after distillation."""
    device = next((p.device for p in teacher.parameters()), None)
    was_training = teacher.training
    try:
        yield
    finally:
        if device is not None:
            teacher.to(device)
        teacher.train(was_training)


def describe_adapter(adapter: nn.Module) -> str:
    if isinstance(adapter, nn.Conv2d):
        return f"Conv2d({adapter.in_channels}→{adapter.out_channels}, 1×1)"
    if isinstance(adapter, nn.Linear):
        return f"Linear({adapter.in_features}→{adapter.out_features})"
    return "Identity (same width)"


def distill_into(student: nn.Module, teacher: nn.Module, data: DataBundle, cfg: KDConfig, *,
                 seed: int, desc: str, ctx: PassContext | None = None) -> TrainResult:
    """Train ``student`` in place from ``teacher`` on ``data.train``; return the history.

    With ``ctx`` the hint adapters are noted in the report and ``ctx.device`` is the default.
    """
    if is_text(data):  # causal LMs: token-level KD (edgecompress.lm.distill)
        from ..lm.distill import lm_distill_into
        with _teacher_restored(teacher):
            return lm_distill_into(student, teacher, data, cfg, seed=seed, desc=desc, ctx=ctx)
    loader = data.require("train", desc)
    assert data.example_input is not None
    check_pair(teacher, student, data.example_input)
    module: nn.Module = student
    if cfg.hints:
        module = _with_adapters(student, teacher, cfg.hints, data.example_input)
        if ctx is not None:
            ctx.note(f"{desc}_adapters", {s: describe_adapter(a) for s, a in
                                          zip(cfg.hints, module.adapters.values())})
    loss = DistillLoss(teacher, cfg.temperature, cfg.alpha, cfg.hints, cfg.feature_weight,
                       student=student)
    plain = train_config(cfg)
    if plain.device is None and ctx is not None and ctx.device is not None:
        plain = dataclasses.replace(plain, device=str(ctx.device))
    try:
        with _teacher_restored(teacher):
            return train(module, loader, loss, plain, val_loader=data.val, desc=desc, seed=seed)
    finally:
        loss.close()


def model_facts(model: nn.Module, data: DataBundle, name: str) -> dict[str, Any]:
    """Measured params, size, MACs, accuracy and latency of ``model`` (for the report notes)."""
    from ..stages import Measure, measure_stage

    m = measure_stage(model, Form.TORCH_FLOAT, data, Measure(latency_runs=20, latency_warmup=3),
                      name)
    return {"params": m.params, "size_bytes": m.size_bytes, "macs": m.macs,
            "accuracy": m.accuracy, "latency_ms": m.latency_ms}


# -- the pass ---------------------------------------------------------------------------------

@dataclass
class Distill(Pass, KDConfig):
    """Knowledge distillation: train a student on a teacher's softened outputs.

    * ``student=`` given: the model in hand (or ``teacher=``) is the teacher; the trained
      student replaces the model in hand. ``student`` may be a module or a name from
      :mod:`edgecompress.students` (``"mobilenet_v3_small"``), which recipes can hold.
    * only ``teacher=`` given: the model in hand is the student.

    The loss is ``α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``
    plus ``feature_weight`` × the hint-layer MSE when ``hints`` are given. The teacher stays in
    eval mode without gradients. Training is :func:`edgecompress.training.train` (AdamW + cosine,
    gradient clipping, best-on-val restore, early stopping, resumable ``checkpoint``). The report
    notes hold teacher vs student params, size, MACs, accuracy and latency; with
    ``baseline=True`` also the same student trained without the teacher (same epochs and seed).
    """

    name: ClassVar[str] = "distill"
    accepts: ClassVar[tuple[Form, ...]] = (Form.TORCH_FLOAT,)
    produces: ClassVar[Form | None] = Form.TORCH_FLOAT

    epochs: int = option(10, "Passes over the training data.", low=0)
    teacher: nn.Module | None = option(None, "Teacher model (None: the model in hand).",
                                       recipe=False)
    student: nn.Module | str | None = option(
        None, "Student model or student name (ec.students.NAMES); None: the model in hand.",
        check=_check_student)
    baseline: bool = option(False, "Also train the same student without the teacher (same "
                                   "epochs, seed and batches) and report its accuracy.")
    measure: bool = option(True, "Measure teacher and student (params, size, MACs, accuracy, "
                                 "latency) into the report notes.")

    @classmethod
    def recover(cls, **options: Any) -> DistillRecovery:
        """A ``finetune=`` hook for pruning/QAT passes: distill from the pre-pass model."""
        return DistillRecovery(**options)

    def validate(self) -> None:
        if self.teacher is None and self.student is None:
            raise ConfigError("Distill needs student= (the model in hand teaches it) or "
                              "teacher= (it teaches the model in hand)")
        if self.teacher is not None and self.teacher is self.student:
            raise ConfigError("Distill: teacher and student are the same module")

    def check_data(self, data: DataBundle) -> None:
        if data.train is None:
            raise DataError("Distill trains the student on DataBundle.train, which was not "
                            "given; pass training batches (e.g. ec.data.idx(..., limit_train=))")
        if isinstance(self.teacher, nn.Module) and isinstance(self.student, nn.Module):
            check_models(self.teacher, self.student, data)

    def to_recipe(self) -> dict[str, Any]:
        out = super().to_recipe()
        if isinstance(self.student, nn.Module):
            out.pop("student")  # a module cannot live in a recipe; a student name can
        return out

    def run(self, model: nn.Module, ctx: PassContext) -> StageOutput:
        teacher, student = self._roles(model, ctx)
        check_models(teacher, student, ctx.data)
        seed = self.seed if self.seed is not None else ctx.seed
        initial = copy.deepcopy(student) if self.baseline else None
        train_loader = ctx.data.require("train", "Distill")
        with same_batches(train_loader):
            result = distill_into(student, teacher, ctx.data, self, seed=seed, desc="distill",
                                  ctx=ctx)
        ctx.note("distill_history", result.history)
        ctx.note("distill_best_epoch", result.best_epoch)
        if initial is not None:
            self._baseline(initial, ctx, seed)
        if self.measure:
            with _teacher_restored(teacher):  # measuring switches it to eval mode
                ctx.note("teacher", model_facts(teacher, ctx.data, "teacher"))
            ctx.note("student", model_facts(student, ctx.data, "student"))
        log.info("Distill: student best val accuracy %s at epoch %s%s", result.best_val_accuracy,
                 result.best_epoch, f" (without the teacher: {ctx.notes['baseline_accuracy']})"
                 if "baseline_accuracy" in ctx.notes else "")
        return StageOutput(student)

    def _roles(self, model: nn.Module, ctx: PassContext) -> tuple[nn.Module, nn.Module]:
        """(teacher, student) for this run; a user-given student is copied, never changed."""
        if self.student is None:
            assert self.teacher is not None
            return self.teacher, model
        teacher = self.teacher if self.teacher is not None else model
        if isinstance(self.student, str):
            from ..students import build

            torch.manual_seed(self.seed if self.seed is not None else ctx.seed)
            return teacher, build(self.student, ctx.data)
        return teacher, copy.deepcopy(self.student)

    def _baseline(self, student: nn.Module, ctx: PassContext, seed: int) -> None:
        """Train ``student`` without the teacher under the same settings; note its accuracy."""
        cfg = train_config(self)
        cfg = dataclasses.replace(cfg, checkpoint=f"{cfg.checkpoint}.baseline" if cfg.checkpoint
                                  else None, device=cfg.device or
                                  (str(ctx.device) if ctx.device is not None else None))
        loader = ctx.data.require("train", "Distill baseline")
        if is_text(ctx.data):  # language models: next-token loss, next-token accuracy
            from ..lm.metrics import lm_loss, perplexity
            result = train(student, loader, lm_loss, cfg, desc="baseline", seed=seed)
            plain = (perplexity(student, ctx.data.val)["next_token_accuracy"]
                     if ctx.data.val is not None else None)
        else:
            result = train(student, loader, cross_entropy_loss, cfg, val_loader=ctx.data.val,
                           desc="baseline", seed=seed)
            plain = accuracy(student, ctx.data.val) if ctx.data.val is not None else None
        ctx.note("baseline_history", result.history)
        ctx.note("baseline_accuracy", plain)


# -- recovery ---------------------------------------------------------------------------------

@dataclass
class DistillRecovery(KDConfig, Recovery):
    """Recovery by distillation (``finetune=ec.Distill.recover(...)``).

    The teacher is ``ctx.model_before``: the model that entered the pruning or quantization
    pass, so the compressed model learns to reproduce the uncompressed one's outputs.
    """

    kind: ClassVar[str] = "distill"
    label: ClassVar[str] = "distillation recovery"

    epochs: int = option(2, "Passes over the training data.", low=0)

    def recover(self, model: nn.Module, ctx: PassContext, desc: str = "distill_recover") -> nn.Module:
        teacher = ctx.model_before
        if not isinstance(teacher, nn.Module):
            raise ConfigError("Distill.recover() needs the model that entered the pass as "
                              "teacher (ctx.model_before); use it inside an ec.Pipeline")
        seed = self.seed if self.seed is not None else ctx.seed
        result = distill_into(model, teacher, ctx.data, self, seed=seed, desc=desc, ctx=ctx)
        ctx.note(f"{desc}_history", result.history)
        return model
