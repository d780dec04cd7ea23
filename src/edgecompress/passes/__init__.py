"""Compression passes. Each lives in its own module and is registered here by name.

The table maps a pass's recipe name to its class, imported lazily so that a pass's heavy
dependencies load only when it is used; it is registered into :data:`edgecompress.registry.passes`
(as are the recovery kinds these passes provide). Plugins add passes through the
``edgecompress.passes`` entry-point group or :func:`register_pass`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import registry
from ..errors import ConfigError
from .base import Pass, PassContext, StageOutput

if TYPE_CHECKING:
    from .distill import Distill
    from .fuse import Fuse
    from .prune_structured import StructuredPrune
    from .prune_unstructured import UnstructuredPrune
    from .quantize import QuantizeDynamic, QuantizePTQ, QuantizeQAT
    from .quantize_weights import QuantizeWeights

PASSES = registry.passes  # recipe name -> Pass subclass or "module:Class" (relative to this package)
_BUILTIN = {
    "fuse": ".fuse:Fuse",
    "structured_prune": ".prune_structured:StructuredPrune",
    "unstructured_prune": ".prune_unstructured:UnstructuredPrune",
    "quantize_ptq": ".quantize:QuantizePTQ",
    "quantize_qat": ".quantize:QuantizeQAT",
    "quantize_dynamic": ".quantize:QuantizeDynamic",
    "distill": ".distill:Distill",
    "quantize_weights": ".quantize_weights:QuantizeWeights",
}
_CLASS_NAMES = {ref.split(":")[1]: name for name, ref in _BUILTIN.items()}


def _check_pass(name: str, cls: Any) -> type[Pass]:
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"register_pass needs a Pass subclass, got {cls!r}")
    return cls


PASSES.check = _check_pass
for _name, _ref in _BUILTIN.items():
    PASSES.register(_name, _ref, replace=True)
registry.recoveries.register("distill", "edgecompress.passes.distill:DistillRecovery", replace=True)


def register_pass(cls: type[Pass], name: str | None = None) -> type[Pass]:
    """Register a Pass subclass under ``name`` (default: ``cls.name``); usable as a decorator."""
    _check_pass(name or "", cls)
    return PASSES.register(name or cls.name, cls, replace=True)


def get_pass(name: str) -> type[Pass]:
    """The Pass class registered as ``name``; ConfigError lists the known names otherwise."""
    return PASSES.get_object(name)


def __getattr__(attr: str) -> Any:
    if attr in _CLASS_NAMES:
        return PASSES.get_object(_CLASS_NAMES[attr])
    raise AttributeError(f"module 'edgecompress.passes' has no attribute '{attr}'")


__all__ = ["PASSES", "Pass", "PassContext", "StageOutput", "get_pass", "register_pass", *_CLASS_NAMES]
