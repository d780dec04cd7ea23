"""Plugins: third-party passes, exporters and runners found through entry points.

A package registers its own in ``pyproject.toml``::

    [project.entry-points."edgecompress.passes"]
    my_pass = "my_pkg.passes:MyPass"            # a Pass subclass
    [project.entry-points."edgecompress.exporters"]
    my_format = "my_pkg.formats:MY_FORMAT"      # a FormatSpec (exporter + runner + suffix)
    [project.entry-points."edgecompress.runners"]
    my_runtime = "my_pkg.runtime:MyRunner"      # a Runner subclass with `format` and `suffixes`

Entry points are read once, on first use of a registry; a broken plugin is logged and skipped
so it cannot break the library for everyone else.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

log = logging.getLogger("edgecompress")

GROUPS = ("edgecompress.passes", "edgecompress.exporters", "edgecompress.runners")
_loaded = False


def load_object(ref: str) -> Any:
    """Import ``"package.module:Attribute"``."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ConfigError(f"'{ref}' is not of the form 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _register_exporter(name: str, obj: Any) -> None:
    from .formats import FormatSpec, register_format

    spec = obj() if callable(obj) and not isinstance(obj, FormatSpec) else obj
    if not isinstance(spec, FormatSpec):
        raise ConfigError(f"exporter entry point '{name}' must give a FormatSpec, got "
                          f"{type(spec).__name__}")
    register_format(spec, replace=True)


def _register_runner(name: str, obj: Any) -> None:
    from dataclasses import replace

    from .formats import FORMATS, FormatSpec, register_format

    fmt = getattr(obj, "format", name)
    ref = f"{obj.__module__}:{obj.__qualname__}"
    if fmt in FORMATS:
        register_format(replace(FORMATS[fmt], runner=ref), replace=True)
    else:
        register_format(FormatSpec(fmt, tuple(getattr(obj, "suffixes", ())),
                                   getattr(obj, "__doc__", "") or fmt, exporter="", runner=ref),
                        replace=True)


def load_plugins(force: bool = False) -> None:
    """Register every installed plugin (idempotent)."""
    global _loaded
    if _loaded and not force:
        return
    _loaded = True
    from .passes import register_pass

    handlers = {"edgecompress.passes": lambda n, o: register_pass(o, name=n),
                "edgecompress.exporters": _register_exporter,
                "edgecompress.runners": _register_runner}
    for group in GROUPS:
        for ep in entry_points(group=group):
            try:
                handlers[group](ep.name, ep.load())
                log.debug("loaded plugin %s from %s", ep.name, ep.value)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the library
                log.warning("skipping edgecompress plugin '%s' (%s): %s", ep.name, ep.value, exc)
