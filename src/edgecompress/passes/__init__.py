"""Compression passes. Each lives in its own module and is registered here by name.

The table maps a pass's recipe name to its class, imported lazily so that a pass's heavy
dependencies load only when it is used. Plugins add passes through the ``edgecompress.passes``
entry-point group or :func:`register_pass`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Pass, PassContext

if TYPE_CHECKING:
    from .distill import Distill
    from .fuse import Fuse
    from .prune_structured import StructuredPrune
    from .prune_unstructured import UnstructuredPrune
    from .quantize import QuantizeDynamic, QuantizePTQ, QuantizeQAT
    from .quantize_weights import QuantizeWeights

# recipe name -> "module:Class" (relative to edgecompress.passes)
PASSES: dict[str, Any] = {
    "fuse": ".fuse:Fuse",
    "structured_prune": ".prune_structured:StructuredPrune",
    "unstructured_prune": ".prune_unstructured:UnstructuredPrune",
    "quantize_ptq": ".quantize:QuantizePTQ",
    "quantize_qat": ".quantize:QuantizeQAT",
    "quantize_dynamic": ".quantize:QuantizeDynamic",
    "distill": ".distill:Distill",
    "quantize_weights": ".quantize_weights:QuantizeWeights",
}
_CLASS_NAMES = {ref.split(":")[1]: name for name, ref in PASSES.items()}


def _resolve(ref: Any) -> type[Pass]:
    if isinstance(ref, type):
        return ref
    import importlib

    module, _, attr = ref.partition(":")
    mod = importlib.import_module(module, __name__) if module.startswith(".") else importlib.import_module(module)
    return getattr(mod, attr)


def register_pass(cls: type[Pass], name: str | None = None) -> type[Pass]:
    """Register a Pass subclass under ``name`` (default: ``cls.name``); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"register_pass needs a Pass subclass, got {cls!r}")
    PASSES[name or cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The Pass class registered as ``name``; ConfigError lists the known names otherwise."""
    from ..plugins import load_plugins

    load_plugins()
    if name not in PASSES:
        raise ConfigError(f"unknown pass '{name}'. Known passes: {', '.join(sorted(PASSES))}")
    return _resolve(PASSES[name])


def __getattr__(attr: str) -> Any:
    if attr in _CLASS_NAMES:
        return _resolve(PASSES[_CLASS_NAMES[attr]])
    raise AttributeError(f"module 'edgecompress.passes' has no attribute '{attr}'")


__all__ = ["PASSES", "Pass", "PassContext", "get_pass", "register_pass", *_CLASS_NAMES]
