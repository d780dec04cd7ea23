"""Declare an option once; get validation, recipe (de)serialization and docs from it.

A pass (or exporter config) is a dataclass whose fields are declared with :func:`option`::

    @dataclass
    class StructuredPrune(Pass):
        ratio: float = option(0.3, "Fraction of channels to remove.", low=0, high=1,
                              low_open=True, high_open=True)

From that one declaration come: the constructor (dataclass), validation at construction time
(:func:`validate_options`), the recipe schema (:func:`options_schema`), recipe loading with
clear errors for unknown keys (:func:`from_options`) and the option tables in the docs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError

_META_KEY = "edgecompress_option"


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """What an option accepts, beyond its type annotation."""

    doc: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    recipe: bool = True  # False: a Python object (a model, a callable) that no recipe can hold
    check: Callable[[Any], str | None] | None = None  # returns an error text, or None when fine


def option(default: Any = dataclasses.MISSING, doc: str = "", *,
           factory: Callable[[], Any] | None = None,
           choices: Sequence[Any] | None = None,
           low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False,
           recipe: bool = True,
           check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare a dataclass field as a validated, documented option."""
    spec = OptionSpec(doc=doc, choices=tuple(choices) if choices is not None else None,
                      low=low, high=high, low_open=low_open, high_open=high_open,
                      recipe=recipe, check=check)
    meta = {_META_KEY: spec}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls_or_obj: Any) -> list[tuple[dataclasses.Field[Any], OptionSpec]]:
    """The declared options of a dataclass (fields made with :func:`option`), in order."""
    return [(f, f.metadata[_META_KEY]) for f in dataclasses.fields(cls_or_obj)
            if _META_KEY in f.metadata]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """A small runtime type check covering the annotations options use."""
    if tp is Any or tp is object:
        return True
    if tp is type(None):
        return value is None
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(tp))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        container = (tuple, list) if origin in (tuple, Sequence, typing.Sequence) else (origin or tp,)
        if not isinstance(value, container) or isinstance(value, str):
            return False
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin is not None:  # Callable[...] and other generics: check the origin only
        return isinstance(value, origin) if isinstance(origin, type) else callable(value)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _range_text(spec: OptionSpec) -> str:
    lo = "(" if spec.low_open else "["
    hi = ")" if spec.high_open else "]"
    low = "-inf" if spec.low is None else f"{spec.low:g}"
    high = "inf" if spec.high is None else f"{spec.high:g}"
    return f"{lo}{low}, {high}{hi}"


def _in_range(value: float, spec: OptionSpec) -> bool:
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        return False
    if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
        return False
    return True


def _problem(value: Any, tp: Any, spec: OptionSpec) -> str | None:
    if not _matches(value, tp):
        return f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    if isinstance(value, float) and math.isnan(value):
        return "NaN is not a value (give a number)"
    if spec.choices is not None and value is not None:
        items = value if isinstance(value, (list, tuple)) and not isinstance(value, str) else [value]
        bad = [v for v in items if v not in spec.choices]
        if bad:
            return f"{bad[0]!r} is not one of {', '.join(repr(c) for c in spec.choices)}"
    if (spec.low is not None or spec.high is not None) and isinstance(value, (int, float)) \
            and not isinstance(value, bool) and not _in_range(value, spec):
        return f"{value!r} is outside the allowed range {_range_text(spec)}"
    if spec.check is not None and value is not None:
        return spec.check(value)
    return None


def _hints(obj: Any) -> dict[str, Any]:
    cls = obj if isinstance(obj, type) else type(obj)
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward refs: fall back to no type checks
        return {}


def validate_options(obj: Any) -> None:
    """Check every declared option of a dataclass instance; raise ConfigError naming the first bad one."""
    hints = _hints(obj)
    owner = type(obj).__name__
    for f, spec in option_fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        problem = _problem(value, hints.get(f.name, Any), spec)
        if problem:
            raise ConfigError(f"{owner}: option '{f.name}' is invalid: {problem}. "
                              f"({f.name}: {spec.doc})")


def options_dict(obj: Any, recipe_only: bool = True) -> dict[str, Any]:
    """The option values of ``obj`` as plain data (what a recipe stores)."""
    out: dict[str, Any] = {}
    for f, spec in option_fields(obj):
        if recipe_only and not spec.recipe:
            continue
        value = getattr(obj, f.name)
        if hasattr(value, "to_recipe"):
            value = value.to_recipe()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A declared option's default (a fresh one from its factory; None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def options_schema(cls: type) -> dict[str, dict[str, Any]]:
    """Name → {type, default, doc, choices, range, recipe} for each declared option (docs, recipes)."""
    hints = _hints(cls)
    schema: dict[str, dict[str, Any]] = {}
    for f, spec in option_fields(cls):
        entry: dict[str, Any] = {"type": _type_name(hints.get(f.name, Any)), "default": field_default(f),
                                 "doc": spec.doc, "recipe": spec.recipe}
        if spec.choices is not None:
            entry["choices"] = list(spec.choices)
        if spec.low is not None or spec.high is not None:
            entry["range"] = _range_text(spec)
        schema[f.name] = entry
    return schema


def from_options(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build ``cls`` from plain data, rejecting unknown keys with the list of allowed ones."""
    allowed = {f.name: spec for f, spec in option_fields(cls)}
    where = where or cls.__name__
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown option '{key}'. "
                              f"Allowed options: {', '.join(sorted(allowed)) or '(none)'}")
        if not allowed[key].recipe:
            raise ConfigError(f"{where}: option '{key}' takes a Python object and cannot be "
                              f"set from a recipe; set it in Python instead")
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        tp = hints.get(key, Any)
        if isinstance(value, list) and _wants_tuple(tp):
            value = tuple(value)
        kwargs[key] = _coerce_nested(tp, value, f"{where}.{key}")
    return cls(**kwargs)


def _wants_tuple(tp: Any) -> bool:
    origin = get_origin(tp)
    if origin is tuple or tp is tuple:
        return True
    if origin in (Union, types.UnionType):
        return any(_wants_tuple(a) for a in get_args(tp))
    return False


def _coerce_nested(tp: Any, value: Any, where: str) -> Any:
    """Turn a mapping into a nested option dataclass (e.g. ``finetune: FineTune``) when the type says so."""
    if not isinstance(value, Mapping):
        return value
    candidates = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    for cand in candidates:
        builder = getattr(cand, "from_recipe", None)
        if builder is not None:
            return builder(value, where=where)
        if dataclasses.is_dataclass(cand) and option_fields(cand):
            return from_options(cand, value, where)
    return value
