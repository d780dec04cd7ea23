"""Token-level knowledge distillation between causal LMs (what ``Distill`` uses on text data).

Every position is one classification over the vocabulary: the student learns
``α·CE(next token) + (1−α)·T²·KL(teacher ‖ student)`` per token, the loss of
:func:`edgecompress.losses.kd_loss` applied to the flattened ``(batch·seq, vocab)`` logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import kd_loss
from ..training import TrainResult, train, train_config
from .metrics import logits_of


class TokenKDLoss:
    """``loss_fn(model, x, y)`` for :func:`~edgecompress.training.train` on token windows."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        student = logits_of(model, x)[:, :-1].flatten(0, 1)
        labels = y[:, 1:].flatten()
        if self.alpha >= 1.0:
            return kd_loss(student, student, labels, self.temperature, 1.0)
        self.teacher.eval()
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            teacher = logits_of(self.teacher, x)[:, :-1].flatten(0, 1)
        return kd_loss(student, teacher, labels, self.temperature, self.alpha)


@torch.no_grad()
def check_lm_pair(teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> None:
    """ConfigError unless both are causal LMs over the same vocabulary."""
    if teacher is student:
        raise ConfigError("Distill: the teacher and the student are the same module")
    shapes = []
    for role, model in (("teacher", teacher), ("student", student)):
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            shapes.append(tuple(logits_of(model, example[:1].to(device)).shape))
        except Exception as exc:  # noqa: BLE001 - any failure here means: not a causal LM
            raise ConfigError(f"Distill on text needs causal LMs that take token ids and return "
                              f"logits; the {role} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
    if shapes[0] != shapes[1]:
        raise ConfigError(f"Distill: teacher logits {shapes[0]} and student logits {shapes[1]} "
                          f"differ; token-level distillation needs the same vocabulary")


def lm_distill_into(student: nn.Module, teacher: nn.Module, data: Any, cfg: Any, *, seed: int,
                    desc: str, ctx: Any = None) -> TrainResult:
    """Train ``student`` in place on ``data.train`` windows from ``teacher``'s token logits."""
    if cfg.hints:
        raise ConfigError("Distill: hint layers (hints=) are for image models; token-level "
                          "distillation of language models matches the logits only")
    check_lm_pair(teacher, student, data.example_input)
    plain = train_config(cfg)
    if plain.device is None and ctx is not None and ctx.device is not None:
        plain = dataclasses.replace(plain, device=str(ctx.device))
    loss = TokenKDLoss(teacher, cfg.temperature, cfg.alpha)
    # the loop's best-on-val tracks top-1 of image classifiers; LMs keep the last epoch
    return train(student, data.require("train", desc), loss, plain, val_loader=None, desc=desc,
                 seed=seed)
