"""A replayable snapshot of a model's structure, so compressed models reload without pickle.

Pruning changes layer widths; fusion swaps BatchNorm for Identity. :func:`snapshot` records,
for every submodule, its class, its plain attributes (channel counts, groups, heads…) and the
shapes of its parameters and buffers. :func:`apply_snapshot` replays that record onto a freshly
built (uncompressed) model so its state dict loads with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ArtifactError

_PLAIN = (int, float, bool, str, type(None))
_SKIP_ATTRS = {"training"}
# classes that can replace a module during replay because they take no constructor arguments
_NO_ARG_MODULES = {"torch.nn.modules.linear.Identity": nn.Identity}


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _PLAIN) for v in value)
    return False


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Class, plain attributes and tensor shapes of every submodule, keyed by name."""
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(module).items()
                 if k not in _SKIP_ATTRS and not k.startswith("__") and _plain(v)}
        out[name] = {
            "type": _qualname(module),
            "attrs": attrs,
            "params": {k: (None if p is None else list(p.shape))
                       for k, p in module._parameters.items()},
            "buffers": {k: (None if b is None else list(b.shape))
                        for k, b in module._buffers.items()},
        }
    return out


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _replay_module(model: nn.Module, name: str, rec: dict[str, Any]) -> None:
    try:
        module = model.get_submodule(name) if name else model
    except AttributeError:
        module = None
    if module is None or _qualname(module) != rec["type"]:
        factory = _NO_ARG_MODULES.get(rec["type"])
        if factory is None or not name:
            found = "nothing" if module is None else _qualname(module)
            raise ArtifactError(f"cannot rebuild module '{name}': the saved model has "
                                f"{rec['type']} there but the builder made {found}. "
                                f"Was the model built by a different builder?")
        module = factory()
        _set_child(model, name, module)
    for key, value in rec["attrs"].items():
        old = getattr(module, key, None)
        setattr(module, key, tuple(value) if isinstance(old, tuple) and isinstance(value, list)
                else value)
    for key, shape in rec["params"].items():
        _resize(module, key, shape, parameter=True)
    for key, shape in rec["buffers"].items():
        _resize(module, key, shape, parameter=False)


def _resize(module: nn.Module, key: str, shape: list[int] | None, parameter: bool) -> None:
    store = module._parameters if parameter else module._buffers
    current = store.get(key)
    if shape is None:
        store[key] = None
        return
    if current is not None and list(current.shape) == shape:
        return
    dtype = current.dtype if current is not None else torch.float32
    empty = torch.zeros(shape, dtype=dtype)
    store[key] = nn.Parameter(empty, requires_grad=current.requires_grad if current is not None
                              else True) if parameter else empty


def apply_snapshot(model: nn.Module, snap: dict[str, Any]) -> nn.Module:
    """Reshape ``model`` in place to match ``snap`` (parents before children)."""
    for name in sorted(snap, key=lambda n: (n.count(".") if n else -1, n)):
        _replay_module(model, name, snap[name])
    extra = sorted(set(dict(model.named_modules())) - set(snap))
    if extra:
        raise ArtifactError(f"the rebuilt model has modules the saved model does not "
                            f"({', '.join(extra[:5])}); was it built by a different builder?")
    return model
