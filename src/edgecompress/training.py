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
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from ._checkpoint import fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ._progress import progress
from .context import pick_device
from .data.bundle import iter_batches
from .data.inputs import batch_size, call_model, tensors, to_device
from .errors import ConfigError, DataError
from .options import option, options_dict, validate_options

if TYPE_CHECKING:
    from .context import PassContext

log = logging.getLogger("edgecompress")

LossFn = Callable[[nn.Module, Any, Any], torch.Tensor]  # (model, inputs, labels) -> loss


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Any], device: torch.device | None = None,
             limit_samples: int | None = None) -> float | None:
    """Top-1 accuracy of ``model`` on ``loader``: None when the loader has no labels or the
    model's output is not one tensor of class scores (detection, dict, tuple outputs)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i, (x, y) in enumerate(iter_batches(loader, limit_samples)):
            if y is None:
                return None
            _check_finite(x, i)
            out = _first_output(call_model(model, to_device(x, device)))
            if not _is_scores(out, y):
                log.info("accuracy not measured: the model's output (%s) is not one tensor of "
                         "class scores per labelled sample", type(out).__name__)
                return None
            correct += int((out.argmax(dim=1).cpu() == y.cpu()).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    return correct / total if total else None


def _first_output(out: Any) -> Any:
    """The model's first output by ``flatten_outputs`` (``logits`` of a ModelOutput), as an
    artifact's runner gives it."""
    from .signature import flatten_outputs

    flat = flatten_outputs(out)
    return flat[0][1] if flat else out


def _is_scores(out: Any, y: Any) -> bool:
    return (isinstance(out, torch.Tensor) and out.dim() == 2 and isinstance(y, torch.Tensor)
            and y.dim() == 1 and out.shape[0] == y.shape[0] and not y.is_floating_point())


def _check_finite(x: Any, i: int) -> None:
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors(x)):
        raise DataError(f"validation batch {i + 1} holds NaN or Inf inputs, so no "
                        f"accuracy can be measured on it; clean the data (e.g. "
                        f"torch.nan_to_num) or drop those samples")


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
    loop = _Loop(model, loss_fn, cfg, params, opt, _scheduler(opt, cfg, steps * cfg.epochs),
                 device, steps, desc, fingerprint(cfg, model, desc), (train_loader, val_loader))
    state = _TrainState(history=[], best_acc=None, best_epoch=None, best_weights=None, start=0)
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = _resume(cfg.checkpoint, loop)
    for epoch in range(state.start, cfg.epochs):
        mean_loss = loop.epoch(train_loader, epoch, state)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if _end_epoch(loop, state, epoch, mean_loss, val_loader):
            break
    if cfg.best_on_val and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    model.eval()
    return TrainResult(state.history, state.best_epoch, state.best_acc)


@dataclass
class _Loop:
    """One training run's model, optimizer and schedule; :meth:`epoch` trains one epoch."""

    model: nn.Module
    loss_fn: LossFn
    cfg: TrainConfig
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    device: torch.device
    steps: int
    desc: str
    run_id: dict[str, Any]  # what a checkpoint must match to be resumed
    loaders: tuple[Any, ...]  # whose shuffling state a checkpoint keeps

    def __post_init__(self) -> None:
        self.use_amp = self.cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def epoch(self, loader: Iterable[Any], epoch: int, state: "_TrainState") -> float:
        """Train one epoch; the mean training loss."""
        self.model.train()
        total, count = 0.0, 0
        bar = progress(iter_batches(loader), desc=f"{self.desc} {epoch + 1}/{self.cfg.epochs}",
                       total=self.steps)
        for i, (x, y) in enumerate(bar):
            if i >= self.steps:
                break
            if y is None:
                raise DataError(f"{self.desc}: training batches need labels")
            loss = self.step(to_device(x, self.device), _labels_to(y, self.device), epoch)
            total += loss * batch_size(x)
            count += batch_size(x)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}", **_last_val(state))
        if count == 0:
            hint = (" (a generator or iterator can be read only once: pass a list or a "
                    "DataLoader)" if epoch > state.start else "")
            raise DataError(f"{self.desc}: the training data gave no batches in epoch "
                            f"{epoch + 1}{hint}")
        return total / max(count, 1)

    def step(self, x: torch.Tensor, y: Any, epoch: int) -> float:
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss = self.loss_fn(self.model, x, y)
        if not torch.isfinite(loss):
            raise DataError(f"{self.desc}: the loss became {float(loss)} at epoch {epoch + 1}; "
                            f"lower the learning rate (now {self.cfg.lr}) or check the data")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return float(loss.detach())


def _labels_to(y: Any, device: torch.device) -> Any:
    """Label tensors move to ``device``; other labels (a detector's per-image target dicts)
    reach the loss as they are, which moves what it needs."""
    return y.to(device) if isinstance(y, torch.Tensor) else y


def _end_epoch(loop: _Loop, state: "_TrainState", epoch: int, mean_loss: float,
               val_loader: Iterable[Any] | None) -> bool:
    """Validate, keep the best weights, checkpoint; True when early stopping ends the run."""
    cfg, desc = loop.cfg, loop.desc
    acc = accuracy(loop.model, val_loader, loop.device) if val_loader is not None else None
    state.history.append({"epoch": epoch + 1, "loss": mean_loss, "val_accuracy": acc})
    log.info("%s epoch %d/%d: loss %.4f, val accuracy %s", desc, epoch + 1, cfg.epochs,
             mean_loss, "n/a" if acc is None else f"{acc:.4f}")
    if acc is not None and (state.best_acc is None or acc > state.best_acc):
        state.best_acc, state.best_epoch = acc, epoch + 1
        state.best_weights = copy.deepcopy(loop.model.state_dict())
    if cfg.checkpoint:
        _save_checkpoint(cfg.checkpoint, loop, state, epoch + 1)
    if cfg.patience and state.best_epoch is not None and epoch + 1 - state.best_epoch >= cfg.patience:
        log.info("%s: early stop at epoch %d (best %d)", desc, epoch + 1, state.best_epoch)
        return True
    return False


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


def _save_checkpoint(path: str, loop: _Loop, state: _TrainState, epoch: int) -> None:
    save_checkpoint(path, {
        "epoch": epoch, "model": loop.model.state_dict(), "optimizer": loop.opt.state_dict(),
        "scheduler": loop.sched.state_dict(), "scaler": loop.scaler.state_dict(),
        "best_acc": state.best_acc, "best_epoch": state.best_epoch,
        "best_weights": state.best_weights, "history": state.history,
        "fingerprint": loop.run_id, "rng": rng_state(loop.loaders)})


def _resume(path: str, loop: _Loop) -> _TrainState:
    payload = load_checkpoint(path, loop.run_id)
    loop.model.load_state_dict(payload["model"])
    loop.opt.load_state_dict(payload["optimizer"])
    loop.sched.load_state_dict(payload["scheduler"])
    if payload.get("scaler"):
        loop.scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"], loop.loaders)
    log.info("%s: resumed from %s at epoch %d", loop.desc, path, payload["epoch"])
    return _TrainState(history=list(payload["history"]), best_acc=payload["best_acc"],
                       best_epoch=payload["best_epoch"], best_weights=payload["best_weights"],
                       start=int(payload["epoch"]))


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise DataError(f"the default training loss is cross-entropy on class-id labels, but "
                        f"the labels are a {type(y).__name__} (a detector's targets?); give "
                        f"the loss: ec.FineTune(loss=lambda model, x, y: ...) as finetune=")
    return F.cross_entropy(call_model(model, x), y)


class Recovery:
    """Hook that pruning and quantization passes call to recover accuracy (``finetune=``).

    ``recover(model, ctx)`` trains ``model`` in place and returns it; ``ctx.model_before`` is
    the model that entered the pass (a teacher for distillation recovery).
    """

    kind: ClassVar[str] = "recovery"
    label: ClassVar[str] = "recovery"  # how errors name it

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

        data = dict(value)
        kind = data.pop("kind", "finetune")
        if kind not in registry.recoveries:
            raise ConfigError(f"{where}: unknown recovery kind '{kind}'. "
                              f"Known: {', '.join(sorted(registry.recoveries))}")
        return from_options(registry.recoveries.get_object(kind), data, where)


@dataclass
class FineTune(TrainConfig, Recovery):
    """Supervised fine-tuning on ``data.train`` used for recovery: cross-entropy, or your
    ``loss(model, inputs, labels) -> scalar tensor`` (a detector's loss on its target dicts)."""

    kind: ClassVar[str] = "finetune"
    label: ClassVar[str] = "fine-tuning recovery"

    loss: LossFn | None = option(None, "Your loss(model, inputs, labels) -> scalar tensor "
                                       "(None: cross-entropy on class ids).", recipe=False)

    def recover(self, model: nn.Module, ctx: "PassContext", desc: str = "finetune") -> nn.Module:
        """Fine-tune ``model`` on ``ctx.data.train`` with ``loss`` (default cross-entropy)."""
        loader = ctx.data.require("train", desc)
        result = train(model, loader, self.loss or cross_entropy_loss, with_device(self, ctx),
                       val_loader=ctx.data.val, desc=desc, seed=ctx.seed)
        ctx.note(f"{desc}_history", result.history)
        return model


registry.recoveries.register("finetune", FineTune, replace=True)


def with_device(cfg: TrainConfig, ctx: "PassContext") -> TrainConfig:
    """``cfg`` training on the pipeline's device (``Pipeline(device=...)``) unless it names its
    own: a recovery must not silently pick CUDA when the pipeline was told to use the CPU."""
    if cfg.device is not None or ctx.device is None:
        return cfg
    return dataclasses.replace(cfg, device=str(ctx.device))


def train_config(cfg: TrainConfig) -> TrainConfig:
    """A plain TrainConfig with the same values (drops subclass behaviour)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})
