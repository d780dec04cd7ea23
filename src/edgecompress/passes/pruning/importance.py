"""Channel-importance criteria for structured pruning, backed by Torch-Pruning's estimators."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._extras import require
from ...data.bundle import iter_batches
from ...errors import DataError
from ...signature import flatten_outputs

if TYPE_CHECKING:
    from ...data.bundle import DataBundle

log = logging.getLogger("edgecompress")

IMPORTANCES = ("l1", "l2", "taylor", "bn_scale", "random")


def make_importance(name: str) -> Any:
    """A Torch-Pruning importance estimator for ``name`` (one of :data:`IMPORTANCES`)."""
    tp = require("torch_pruning", "prune", "Structured pruning (Torch-Pruning)")
    imp = tp.importance
    if name == "l1":
        return imp.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return imp.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return imp.GroupTaylorImportance()
    if name == "bn_scale":
        # groups without a BatchNorm get no score and are left whole (documented)
        return imp.BNScaleImportance()
    if name == "random":
        return imp.RandomImportance()
    raise ValueError(f"unknown importance {name!r}")


def gradient_batches(data: DataBundle, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches`` labelled training batches (fixed, so repeated trials agree)."""
    loader = data.train if data.train is not None else data.val
    if loader is None:
        raise DataError("importance='taylor' needs labelled data (data.train or data.val) to "
                        "compute gradients; use importance='l2' when there is none")
    out = []
    for x, y in iter_batches(loader):
        if y is None:
            raise DataError("importance='taylor' needs labelled batches; the loader yields "
                            "inputs only. Use importance='l2' instead")
        out.append((x, y))
        if len(out) >= batches:
            break
    return out


def accumulate_gradients(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Fill ``.grad`` of every parameter with the cross-entropy gradient over ``batches``.

    The model stays in eval mode so BatchNorm statistics are not disturbed by the extra passes.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.enable_grad():
        for x, y in batches:
            out = model(x.to(device))
            logits = out if isinstance(out, torch.Tensor) else flatten_outputs(out)[0][1]
            F.cross_entropy(logits, y.to(device)).backward()
