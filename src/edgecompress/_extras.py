"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``.

    Only a missing top-level package becomes a MissingExtraError; an ImportError raised from
    inside an installed package is a real bug and is re-raised as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        root = module.split(".")[0]
        if exc.name and exc.name.split(".")[0] == root:
            raise MissingExtraError(extra, module, purpose) from exc
        raise


def available(module: str) -> bool:
    """True when ``module`` can be imported (used to list formats usable on this machine)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
