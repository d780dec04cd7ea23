"""Knowledge-distillation losses: Hinton's soft-target loss and hint-layer feature matching.

:func:`kd_loss` is the formula; :class:`DistillLoss` is the ``loss_fn(model, x, y)`` that
:func:`edgecompress.training.train` calls, holding the frozen teacher and the feature hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """``α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones
    when T changes (Hinton et al., 2015). KL is averaged over the batch.
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha >= 1.0:
        return hard  # skip the teacher term entirely: exactly plain cross-entropy
    t = float(temperature)
    # float32 for the softmaxes: under autocast fp16 the log-probs of small logits lose bits
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * hard + (1.0 - alpha) * t * t * soft


class FeatureTap:
    """Keeps the latest output of named submodules through forward hooks."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            known = ", ".join(n for n in list(modules)[1:25] if n)
            raise ConfigError(f"Distill hints: the {role} has no layer named "
                              f"{', '.join(repr(m) for m in missing)}. Some of its layer names: "
                              f"{known}{', …' if len(modules) > 25 else ''}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._saver(n)) for n in names]

    def _saver(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.outputs = {}


def make_adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor, name: str) -> nn.Module:
    """A learned map from a student feature to the teacher's width (Identity when they match).

    4-D maps get a 1×1 convolution, 2-D features a linear layer (FitNets-style regressors).
    """
    if student_feat.dim() != teacher_feat.dim() or student_feat.dim() not in (2, 4):
        raise ConfigError(f"Distill hint {name}: student feature {tuple(student_feat.shape)} and "
                          f"teacher feature {tuple(teacher_feat.shape)} must both be 2-D "
                          f"(N, C) or 4-D (N, C, H, W); pick layers with such outputs")
    cs, ct = student_feat.shape[1], teacher_feat.shape[1]
    if cs == ct:
        return nn.Identity()
    if student_feat.dim() == 4:
        return nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    return nn.Linear(cs, ct, bias=False)


def feature_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                 adapter: nn.Module) -> torch.Tensor:
    """Mean squared error between the adapted student feature and the teacher feature."""
    s = adapter(student_feat)
    if s.dim() == 4 and s.shape[-2:] != teacher_feat.shape[-2:]:
        # different strides in the two networks: compare at the teacher's resolution
        s = F.adaptive_avg_pool2d(s, teacher_feat.shape[-2:])
    return F.mse_loss(s.float(), teacher_feat.float())


class DistillLoss:
    """``loss_fn(model, x, y)`` for :func:`~edgecompress.training.train`: KD plus hint losses.

    ``model`` is the module being trained: the student itself, or a :class:`StudentWithAdapters`
    when hints are used (so the adapters are trained and checkpointed along with the student).
    The teacher runs in eval mode under ``torch.no_grad`` and is moved to the batch's device on
    first use.
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float,
                 hints: Mapping[str, str] | None = None, feature_weight: float = 1.0,
                 student: nn.Module | None = None):
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.hints = dict(hints or {})
        self.feature_weight = feature_weight
        self.teacher_tap = FeatureTap(teacher, list(self.hints.values()), "teacher") if self.hints else None
        self.student_tap = (FeatureTap(student, list(self.hints), "student")
                            if self.hints and student is not None else None)
        self.last_parts: dict[str, float] = {}

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:
            self.teacher.eval()  # BN/dropout of the teacher must not change during distillation
        first = next(self.teacher.parameters(), None)
        if first is not None and first.device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            return self.teacher(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s_logits = model(x)
        if self.alpha >= 1.0 and not self.hints:
            return F.cross_entropy(s_logits, y)  # the teacher has no say: skip its forward
        t_logits = self.teacher_logits(x)
        loss = kd_loss(s_logits, t_logits, y, self.temperature, self.alpha)
        self.last_parts = {"kd": float(loss.detach())}
        if self.hints and self.feature_weight > 0:
            feat = self._hint_loss(model)
            self.last_parts["features"] = float(feat.detach())
            loss = loss + self.feature_weight * feat
        return loss

    def _hint_loss(self, model: nn.Module) -> torch.Tensor:
        assert self.teacher_tap is not None and self.student_tap is not None
        adapters = getattr(model, "adapters", None)
        parts = []
        for s_name, t_name in self.hints.items():
            adapter = adapters[adapter_key(s_name)] if adapters is not None else nn.Identity()
            parts.append(feature_loss(self.student_tap.outputs[s_name],
                                      self.teacher_tap.outputs[t_name].detach(), adapter))
        return torch.stack(parts).mean()

    def close(self) -> None:
        """Remove the forward hooks (call once training is over)."""
        for tap in (self.teacher_tap, self.student_tap):
            if tap is not None:
                tap.remove()


def adapter_key(layer_name: str) -> str:
    """A ModuleDict key for a dotted layer name (dots are not allowed in keys)."""
    return layer_name.replace(".", "__")


class StudentWithAdapters(nn.Module):
    """The student plus its hint adapters in one module, so one state dict holds both.

    Training this wrapper (instead of passing the adapters as extra parameters) makes the
    adapters part of every checkpoint, so a resumed run continues with the adapters it had.
    Its forward is the student's.
    """

    def __init__(self, student: nn.Module, adapters: Mapping[str, nn.Module]):
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleDict({adapter_key(k): v for k, v in adapters.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)
