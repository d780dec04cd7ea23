"""Training loops shared by fine-tuning, distillation and QAT.

:func:`train` is the one loop: optimizer, cosine schedule, gradient clipping, best-on-val
checkpoint, early stopping, resumable checkpoints, progress bar, seeding. What differs between
plain fine-tuning and distillation is only the loss function. :class:`Recovery` is the hook that
pruning and quantization passes call to win accuracy back (``finetune=``): :class:`FineTune`
is plain supervised recovery; ``ec.Distill.recover()`` uses the pre-pass model as teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checkpoint import fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ._progress import progress
from .data.bundle import iter_batches
from .errors import ConfigError, DataError
from .options import option, options_dict, validate_options

if TYPE_CHECKING:
    from .passes.base import PassContext

log = logging.getLogger("edgecompress")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def pick_device(device: "torch.device | str | None" = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Any], device: torch.device | None = None,
             limit_samples: int | None = None) -> float | None:
    """Top-1 accuracy of ``model`` on ``loader`` (None when the loader has no labels)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i, (x, y) in enumerate(iter_batches(loader, limit_samples)):
            if y is None:
                return None
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise DataError(f"validation batch {i + 1} holds NaN or Inf inputs, so no "
                                f"accuracy can be measured on it; clean the data (e.g. "
                                f"torch.nan_to_num) or drop those samples")
            out = model(x.to(device))
            correct += int((out.argmax(dim=1).cpu() == y).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    return correct / total if total else None


@dataclass
class TrainConfig:
    """Options of the training loop (shared by FineTune, Distill and QAT)."""

    epochs: int = option(1, "Passes over the training data.", low=0)
    lr: float = option(1e-3, "Peak learning rate.", low=0, low_open=True)
    optimizer: str = option("adamw", "Optimizer.", choices=("adamw", "adam", "sgd"))
    weight_decay: float = option(1e-4, "Weight decay.", low=0)
    momentum: float = option(0.9, "SGD momentum.", low=0, high=1)
    schedule: str = option("cosine", "Learning-rate schedule over all steps.",
                           choices=("cosine", "constant"))
    grad_clip: float | None = option(5.0, "Clip the gradient norm to this value (None: off).",
                                     low=0, low_open=True)
    best_on_val: bool = option(True, "Restore the weights of the epoch with the best val accuracy.")
    patience: int | None = option(None, "Stop after this many epochs without val improvement.",
                                  low=1)
    max_batches: int | None = option(None, "Cap on batches per epoch (quick runs, tests).", low=1)
    device: str | None = option(None, "Device ('cpu', 'cuda', 'auto'/None: CUDA when available).")
    amp: bool = option(True, "Mixed precision on CUDA (ignored on CPU).")
    seed: int | None = option(None, "Seed (None: the pipeline's seed).")
    checkpoint: str | None = option(None, "File to save each epoch to and resume from.")

    def __post_init__(self) -> None:
        validate_options(self)


@dataclass
class TrainResult:
    history: list[dict[str, float | None]]
    best_epoch: int | None
    best_val_accuracy: float | None


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "constant" or total_steps <= 0:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


def steps_per_epoch(loader: Iterable[Any], cfg: Any) -> int:
    """Batches one epoch trains on: the loader's length (1000 when it has none), capped by
    ``cfg.max_batches`` when ``cfg`` has one."""
    cap = getattr(cfg, "max_batches", None)
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = cap or 1000
    return min(n, cap) if cap else n


def train(model: nn.Module, train_loader: Iterable[Any], loss_fn: LossFn, cfg: TrainConfig, *,
          val_loader: Iterable[Any] | None = None, desc: str = "train",
          extra_params: Iterable[nn.Parameter] = (), seed: int = 0,
          on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` in place with ``loss_fn(model, x, y)``; return the per-epoch history.

    With ``cfg.best_on_val`` the weights of the best validation epoch are restored at the end.
    With ``cfg.checkpoint`` each epoch is saved atomically and a later call resumes from it.
    """
    seed_everything(cfg.seed if cfg.seed is not None else seed)
    device = pick_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    if not params:
        raise ConfigError(f"{desc}: the model has no trainable parameters")
    opt = _optimizer(params, cfg)
    steps = steps_per_epoch(train_loader, cfg)
    sched = _scheduler(opt, cfg, steps * cfg.epochs)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state = _TrainState(history=[], best_acc=None, best_epoch=None, best_weights=None, start=0)
    run_id = fingerprint(cfg, model, desc)
    loaders = (train_loader, val_loader)
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = _resume(cfg.checkpoint, model, opt, sched, desc, run_id, loaders, scaler)
    for epoch in range(state.start, cfg.epochs):
        model.train()
        total, count = 0.0, 0
        bar = progress(iter_batches(train_loader), desc=f"{desc} {epoch + 1}/{cfg.epochs}",
                       total=steps)
        for i, (x, y) in enumerate(bar):
            if i >= steps:
                break
            if y is None:
                raise DataError(f"{desc}: training batches need labels")
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(model, x, y)
            if not torch.isfinite(loss):
                raise DataError(f"{desc}: the loss became {float(loss)} at epoch {epoch + 1}; "
                                f"lower the learning rate (now {cfg.lr}) or check the data")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}", **_last_val(state))
        if count == 0:
            hint = (" (a generator or iterator can be read only once: pass a list or a "
                    "DataLoader)" if epoch > state.start else "")
            raise DataError(f"{desc}: the training data gave no batches in epoch "
                            f"{epoch + 1}{hint}")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        acc = accuracy(model, val_loader, device) if val_loader is not None else None
        state.history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_accuracy": acc})
        log.info("%s epoch %d/%d: loss %.4f, val accuracy %s", desc, epoch + 1, cfg.epochs,
                 total / max(count, 1), "n/a" if acc is None else f"{acc:.4f}")
        if acc is not None and (state.best_acc is None or acc > state.best_acc):
            state.best_acc, state.best_epoch = acc, epoch + 1
            state.best_weights = copy.deepcopy(model.state_dict())
        if cfg.checkpoint:
            _save_checkpoint(cfg.checkpoint, model, opt, sched, state, epoch + 1, run_id,
                             loaders, scaler)
        if cfg.patience and state.best_epoch is not None and epoch + 1 - state.best_epoch >= cfg.patience:
            log.info("%s: early stop at epoch %d (best %d)", desc, epoch + 1, state.best_epoch)
            break
    if cfg.best_on_val and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    model.eval()
    return TrainResult(state.history, state.best_epoch, state.best_acc)


def _last_val(state: "_TrainState") -> dict[str, str]:
    """The previous epoch's validation accuracy for the progress bar (empty before one exists)."""
    acc = state.history[-1]["val_accuracy"] if state.history else None
    return {} if acc is None else {"val_acc": f"{acc:.4f}"}


@dataclass
class _TrainState:
    history: list[dict[str, float | None]]
    best_acc: float | None
    best_epoch: int | None
    best_weights: dict[str, torch.Tensor] | None
    start: int


def _save_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                     state: _TrainState, epoch: int, run_id: dict[str, Any],
                     loaders: tuple[Any, ...], scaler: Any) -> None:
    save_checkpoint(path, {
        "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
        "best_acc": state.best_acc, "best_epoch": state.best_epoch,
        "best_weights": state.best_weights, "history": state.history,
        "fingerprint": run_id, "rng": rng_state(loaders)})


def _resume(path: str, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, desc: str,
            run_id: dict[str, Any], loaders: tuple[Any, ...], scaler: Any) -> _TrainState:
    payload = load_checkpoint(path, run_id)
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    sched.load_state_dict(payload["scheduler"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"], loaders)
    log.info("%s: resumed from %s at epoch %d", desc, path, payload["epoch"])
    return _TrainState(history=list(payload["history"]), best_acc=payload["best_acc"],
                       best_epoch=payload["best_epoch"], best_weights=payload["best_weights"],
                       start=int(payload["epoch"]))


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


class Recovery:
    """Hook that pruning and quantization passes call to recover accuracy (``finetune=``).

    ``recover(model, ctx)`` trains ``model`` in place and returns it; ``ctx.model_before`` is
    the model that entered the pass (a teacher for distillation recovery).
    """

    kind: ClassVar[str] = "recovery"
    label: ClassVar[str] = "recovery"  # how errors name it
    _kinds: ClassVar[dict[str, str]] = {
        "finetune": "edgecompress.training:FineTune",
        "distill": "edgecompress.passes.distill:DistillRecovery",
    }

    def recover(self, model: nn.Module, ctx: "PassContext", desc: str = "recover") -> nn.Module:
        """Train ``model`` back after a pass changed it; returns it."""
        raise NotImplementedError

    def check_data(self, data: Any) -> None:
        """Raise DataError/ConfigError if ``data`` cannot serve this recovery; the pipeline calls
        it for every pass's ``finetune=`` before any work. Recoveries train on ``data.train``."""
        if data.train is None:
            raise DataError(f"{self.label} trains on DataBundle.train, which was not given "
                            f"(data.train is None); pass labelled training batches or drop "
                            f"finetune=")

    def to_recipe(self) -> dict[str, Any]:
        """The recovery as recipe data (``{'kind': ..., option: value}``)."""
        return {"kind": self.kind, **options_dict(self)}

    @classmethod
    def from_recipe(cls, value: dict[str, Any], where: str = "finetune") -> "Recovery":
        """A Recovery from recipe data; ``kind`` picks the class (default finetune)."""
        from .options import from_options
        from .plugins import load_object

        data = dict(value)
        kind = data.pop("kind", "finetune")
        if kind not in cls._kinds:
            raise ConfigError(f"{where}: unknown recovery kind '{kind}'. "
                              f"Known: {', '.join(sorted(cls._kinds))}")
        target = load_object(cls._kinds[kind])
        return from_options(target, data, where)


@dataclass
class FineTune(TrainConfig, Recovery):
    """Plain supervised fine-tuning (cross-entropy on ``data.train``) used for recovery."""

    kind: ClassVar[str] = "finetune"
    label: ClassVar[str] = "fine-tuning recovery"

    def recover(self, model: nn.Module, ctx: "PassContext", desc: str = "finetune") -> nn.Module:
        """Fine-tune ``model`` on ``ctx.data.train`` with cross-entropy; returns it."""
        loader = ctx.data.require("train", desc)
        result = train(model, loader, cross_entropy_loss, with_device(self, ctx),
                       val_loader=ctx.data.val, desc=desc, seed=ctx.seed)
        ctx.note(f"{desc}_history", result.history)
        return model


def with_device(cfg: TrainConfig, ctx: "PassContext") -> TrainConfig:
    """``cfg`` training on the pipeline's device (``Pipeline(device=...)``) unless it names its
    own: a recovery must not silently pick CUDA when the pipeline was told to use the CPU."""
    if cfg.device is not None or ctx.device is None:
        return cfg
    return dataclasses.replace(cfg, device=str(ctx.device))


def train_config(cfg: TrainConfig) -> TrainConfig:
    """A plain TrainConfig with the same values (drops subclass behaviour)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")
