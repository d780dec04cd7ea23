"""The registries of passes, export formats and recovery kinds: a leaf that others write into.

The tables (:mod:`edgecompress.formats`, :mod:`edgecompress.passes`, :mod:`edgecompress.training`)
register their rows here; lookups (:func:`edgecompress.load`, recipes, ``dm.export``) read them
here, so no layer has to import the layer that defines a row. Entries may be objects or lazy
``"module:Attribute"`` strings, imported only when used. Third-party packages add entries
through entry points, read once, on a registry's first use::

    [project.entry-points."edgecompress.passes"]
    my_pass = "my_pkg.passes:MyPass"            # a Pass subclass
    [project.entry-points."edgecompress.exporters"]
    my_format = "my_pkg.formats:MY_FORMAT"      # a FormatSpec (exporter + runner + suffix)
    [project.entry-points."edgecompress.runners"]
    my_runtime = "my_pkg.runtime:MyRunner"      # a Runner subclass with `format` and `suffixes`
    [project.entry-points."edgecompress.recoveries"]
    my_recovery = "my_pkg.recover:MyRecovery"   # a Recovery subclass (finetune={"kind": ...})

A broken plugin is logged and skipped so it cannot break the library for everyone else.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .errors import ArtifactError, ConfigError

log = logging.getLogger("edgecompress")


def load_object(ref: str, package: str | None = None) -> Any:
    """Import ``"package.module:Attribute"`` (a leading dot is relative to ``package``)."""
    module_name, _, attr = ref.partition(":")
    if not attr or not module_name:
        raise ConfigError(f"'{ref}' is not of the form 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name, package)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(MutableMapping[str, Any]):
    """``name -> entry`` (an object or a lazy ``"module:Attribute"`` string).

    Mapping access gives the raw entry; :meth:`get_object` imports a lazy one. ``check`` (set
    by the table that owns the registry) validates an object before it is registered.
    """

    def __init__(self, what: str, plural: str, groups: tuple[str, ...],
                 package: str | None = None):
        self.what, self.plural, self.groups, self.package = what, plural, groups, package
        self.check: Callable[[str, Any], Any] | None = None
        self._entries: dict[str, Any] = {}
        self._plugins_read = False

    # -- mapping --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        self.read_plugins()
        return self._entries[name]

    def __setitem__(self, name: str, entry: Any) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.read_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.read_plugins()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.read_plugins()
        return name in self._entries

    # -- registration and lookup ------------------------------------------------------------------
    def register(self, name: str, entry: Any, replace: bool = False) -> Any:
        """Add ``entry`` under ``name``; ConfigError when the name is taken and not ``replace``."""
        if name in self._entries and not replace:
            raise ConfigError(f"{self.what} '{name}' is already registered; pass replace=True")
        if self.check is not None and not isinstance(entry, str):
            entry = self.check(name, entry)
        self._entries[name] = entry
        return entry

    def get_object(self, name: str) -> Any:
        """The entry for ``name`` (imported if lazy); ConfigError listing the known names."""
        if name not in self:
            raise ConfigError(f"unknown {self.what} '{name}'. Known {self.plural}: "
                              f"{', '.join(sorted(self._entries))}")
        entry = self._entries[name]
        return load_object(entry, self.package) if isinstance(entry, str) else entry

    def read_plugins(self, force: bool = False) -> None:
        """Register what installed packages declare in this registry's entry-point groups."""
        if self._plugins_read and not force:
            return
        self._plugins_read = True
        for group in self.groups:
            for ep in entry_points(group=group):
                try:
                    self.from_plugin(group, ep.name, ep.load())
                    log.debug("loaded plugin %s from %s", ep.name, ep.value)
                except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the library
                    log.warning("skipping edgecompress plugin '%s' (%s): %s", ep.name, ep.value, exc)

    def from_plugin(self, group: str, name: str, obj: Any) -> None:
        self.register(name, obj, replace=True)


@dataclass(frozen=True)
class FormatSpec:
    """One export format: a row of the format table."""

    name: str
    suffixes: tuple[str, ...]
    description: str
    exporter: str  # "module:Class" of the Exporter
    runner: str  # "module:Class" of the Runner
    extra: str | None = None  # pip extra that installs what it needs
    modules: tuple[str, ...] = ()  # Python modules needed to export and run it
    directory: bool = False  # the artifact is a folder
    fp32: bool = True
    fp16: bool = False
    int8_static: bool = False
    int8_dynamic: bool = False
    weight_only: bool = False  # holds group-wise int4/int8 weights with float activations
    dynamic_batch: bool = False
    needs_gpu: bool = False
    detect: Callable[[Path], bool] | None = field(default=None, compare=False)

    def available(self) -> bool:
        """True when the Python modules it needs are installed here."""
        return all(_installed(m) for m in self.modules)

    def supports(self, precision: str) -> bool:
        """Whether this format can hold ``precision`` ('fp32', 'fp16', 'int8-static', 'int8-dynamic')."""
        if precision.endswith("-weight"):
            return self.weight_only
        return {"fp32": self.fp32, "fp16": self.fp16, "int8": self.int8_static,
                "int8-static": self.int8_static, "int8-dynamic": self.int8_dynamic}.get(precision, False)

    def row(self) -> dict[str, Any]:
        """The format as one row of plain data (``edgecompress formats``, the docs)."""
        return {"format": self.name, "suffix": "/".join(self.suffixes) + ("/ (folder)" if self.directory else ""),
                "extra": self.extra or "(core)", "fp16": self.fp16, "int8 static": self.int8_static,
                "int8 dynamic": self.int8_dynamic, "dynamic batch": self.dynamic_batch,
                "available": self.available(), "description": self.description}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class FormatRegistry(Registry):
    """The format table: ``name -> FormatSpec``."""

    def spec(self, name: str) -> FormatSpec:
        """The row for ``name``, or a ConfigError listing the known formats."""
        return self.get_object(name)

    def for_path(self, path: str | Path) -> FormatSpec:
        """The format of an artifact from its suffix (or, for folders, its contents)."""
        p = Path(path)
        if not p.exists():
            raise ArtifactError(f"artifact {p} does not exist")
        if p.is_dir() and (p / "build_engine.sh").exists():
            raise ArtifactError(f"{p} is a TensorRT build bundle, not an engine: copy it to the "
                                f"device, run build_engine.sh there, then load the .engine file")
        for spec in self.values():
            if spec.directory and spec.detect is not None and spec.detect(p):
                return spec
            if not p.is_dir() and p.suffix.lower() in spec.suffixes:
                return spec
        known = ", ".join(f"{s.name} ({'/'.join(s.suffixes) or 'folder'})" for s in self.values())
        raise ArtifactError(f"cannot tell the format of {p} from its suffix '{p.suffix}'. "
                            f"Known formats: {known}")

    def able(self, precision: str) -> list[str]:
        """Names of the formats that can hold ``precision``."""
        return [s.name for s in self.values() if s.supports(precision)]

    def from_plugin(self, group: str, name: str, obj: Any) -> None:
        if group.endswith(".runners"):
            self._register_runner(name, obj)
            return
        spec = obj() if callable(obj) and not isinstance(obj, FormatSpec) else obj
        if not isinstance(spec, FormatSpec):
            raise ConfigError(f"exporter entry point '{name}' must give a FormatSpec, got "
                              f"{type(spec).__name__}")
        self.register(spec.name, spec, replace=True)

    def _register_runner(self, name: str, obj: Any) -> None:
        fmt = getattr(obj, "format", name)
        ref = f"{obj.__module__}:{obj.__qualname__}"
        if fmt in self._entries:
            self.register(fmt, dataclasses.replace(self._entries[fmt], runner=ref), replace=True)
        else:
            self.register(fmt, FormatSpec(fmt, tuple(getattr(obj, "suffixes", ())),
                                          getattr(obj, "__doc__", "") or fmt, exporter="",
                                          runner=ref), replace=True)


passes = Registry("pass", "passes", ("edgecompress.passes",), package="edgecompress.passes")
formats = FormatRegistry("export format", "formats",
                         ("edgecompress.exporters", "edgecompress.runners"))
recoveries = Registry("recovery kind", "recovery kinds", ("edgecompress.recoveries",))


def read_plugins(force: bool = False) -> None:
    """Read every registry's entry points (idempotent unless ``force``)."""
    for reg in (passes, formats, recoveries):
        reg.read_plugins(force)


__all__ = ["FormatRegistry", "FormatSpec", "Registry", "formats", "load_object", "passes",
           "read_plugins", "recoveries"]
