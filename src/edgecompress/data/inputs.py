"""Model inputs of any structure: one tensor, a tuple of tensors, or a dict of named tensors.

A model takes ``model(x)``, ``model(*x)`` or ``model(**x)``: :func:`call_model` is the one place
that decides which, so the pipeline, the measurements, calibration and the exporters call
models the same way. Batches of these structures are sliced and joined along dimension 0.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import DataError

#: what a model is called with: a tensor, a tuple/list of tensors, or a dict of named tensors
ModelInputs = Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]
#: turns one batch of a loader into model inputs (NNCF's ``Dataset(source, transform)``)
Transform = Callable[[Any], Any]


def call_model(model: Callable[..., Any], x: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple or list, ``model(**x)`` for a dict."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of ``x`` in call order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return list(x.values())
    return list(x)


def named(x: Any, model: nn.Module | None = None, single: str = "input") -> dict[str, torch.Tensor]:
    """``x`` as ``{name: tensor}``: a dict's keys; for a tuple the names of ``model.forward``'s
    positional parameters when they can be read, else ``input_0``, ``input_1``...; a tensor is
    ``single``."""
    if isinstance(x, torch.Tensor):
        return {single: x}
    if isinstance(x, Mapping):
        return {str(k): v for k, v in x.items()}
    names = _positional_names(model, len(x)) or [f"input_{i}" for i in range(len(x))]
    return dict(zip(names, x))


def _positional_names(model: nn.Module | None, n: int) -> list[str] | None:
    try:
        params = list(inspect.signature(model.forward).parameters.values())  # type: ignore[union-attr]
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in params if p.kind in kinds]
    return names[:n] if len(names) >= n else None


def style(x: Any) -> str:
    """How a model takes ``x``: ``"tensor"``, ``"tuple"`` or ``"dict"``."""
    if isinstance(x, torch.Tensor):
        return "tensor"
    return "dict" if isinstance(x, Mapping) else "tuple"


def restyle(values: Sequence[torch.Tensor], names: Sequence[str], how: str) -> Any:
    """Tensors in call order back in the structure ``how`` (from :func:`style`)."""
    if how == "tensor" and len(values) == 1:
        return values[0]
    return dict(zip(names, values)) if how == "dict" else tuple(values)


def apply(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``x`` with ``fn`` applied to each tensor, keeping its structure."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    return type(x)(fn(v) for v in x) if isinstance(x, tuple) else [fn(v) for v in x]


def to_device(x: Any, device: torch.device | str) -> Any:
    return apply(x, lambda t: t.to(device))


def batch_size(x: Any) -> int:
    """The batch size of model inputs (the first tensor's dimension 0)."""
    first = tensors(x)[0] if tensors(x) else None
    if first is None or first.dim() == 0:
        raise DataError("model inputs need a batch dimension (dimension 0)")
    return int(first.shape[0])


def head(x: Any, n: int) -> Any:
    """The first ``n`` samples of model inputs."""
    return apply(x, lambda t: t[:n])


def repeat(x: Any, n: int) -> Any:
    """A batch of ``n`` copies of the first sample."""
    return apply(x, lambda t: t[:1].expand(n, *t.shape[1:]).clone())


def cat(parts: Sequence[Any]) -> Any:
    """Model-input batches joined along dimension 0 (all of one structure)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    if isinstance(first, Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    return type(first)(torch.cat([p[i] for p in parts]) for i in range(len(first)))


def is_inputs(x: Any) -> bool:
    """True for a tensor, or a non-empty tuple/list/dict of tensors."""
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (Mapping, tuple, list)) and len(x):
        return all(isinstance(v, torch.Tensor) for v in tensors(x))
    return False


__all__ = ["ModelInputs", "Transform", "apply", "batch_size", "call_model", "cat", "head",
           "is_inputs", "named", "repeat", "restyle", "style", "tensors", "to_device"]
