"""The error StructuredPrune gives when a coupling cannot be pruned: the layers, and an
``ignore=`` that was checked to work.

The suggestion is not a guess: the pass is run again (one step, no fine-tuning) with the named
layers kept whole, up to a few rounds when another coupling fails next, and the message says
whether that run succeeded.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from ...errors import PassError
from .diagnose import Unprunable

log = logging.getLogger("edgecompress")

_ROUNDS = 4  # re-runs with a growing ignore= before giving up on finding one that works


def _check(pass_: Any, model: nn.Module, ctx: Any, ignore: list[str]) -> Unprunable | str | None:
    """None when pruning with ``ignore`` works; else what failed."""
    trial = dataclasses.replace(pass_, ignore=tuple(ignore), steps=1, finetune=None)
    try:
        trial._prune(model, dataclasses.replace(ctx, notes={}))  # noqa: SLF001 - same pass
    except Unprunable as exc:
        return exc
    except PassError as exc:
        return str(exc)
    return None


def refusal(pass_: Any, model: nn.Module, ctx: Any, first: Unprunable) -> str:
    """The message for ``first``: what failed, which layers, and the ``ignore=`` that works."""
    stage = pass_.name
    head = f"{stage}: cannot prune {type(model).__name__} consistently: {first.detail}"
    if not first.layers:
        return (f"{head}. The failing layers could not be located; keep blocks whole with "
                f"ignore=[...] (top-level blocks: {[n for n, _ in model.named_children()]}) "
                f"or use UnstructuredPrune")
    ignore, failure = list(pass_.ignore), first
    for _ in range(_ROUNDS):
        new = [name for name in failure.layers if name not in ignore]
        if not new:  # kept whole and still failing: the width comes from around it
            new = [p for p in {n.rpartition(".")[0] for n in failure.layers} if p
                   and p not in ignore]
        if not new:
            break
        ignore += new
        log.info("%s: checking whether ignore=%s works", stage, ignore)
        result = _check(pass_, model, ctx, ignore)
        if result is None:
            return (f"{head}. Layers involved: {first.layers}. Keep them whole with "
                    f"ignore={ignore!r} (checked: with it, pruning runs and the model keeps "
                    f"its outputs)")
        if not isinstance(result, Unprunable):
            return (f"{head}. Layers involved: {first.layers}. With ignore={ignore!r} the "
                    f"pass fails otherwise: {result}")
        failure = result
    return (f"{head}. Layers involved: {first.layers}. ignore={ignore!r} was not enough "
            f"(then: {failure}); keep larger blocks whole or use UnstructuredPrune")
