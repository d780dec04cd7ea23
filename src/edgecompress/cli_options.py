"""Command-line flags derived from :func:`~edgecompress.options.option` declarations.

A pass or exporter declares each option once (type, default, doc, choices, range); this module
turns those declarations into ``argparse`` flags, so the CLI's help text, defaults and accepted
values cannot drift from the Python API. The values are validated where the API validates them:
when the pass or exporter options are built (a bad value is a ConfigError naming the option).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any, Callable, Literal, Sequence, Union, get_args, get_origin

from .errors import ConfigError
from .options import OptionSpec, _hints, _range_text, _type_name, field_default, option_fields

_NONE_WORDS = ("none", "null")


def _scalar(tp: Any) -> tuple[Callable[[str], Any] | None, bool]:
    """(text → value converter, is-bool) for an annotation, or (None, False) when no flag can
    hold it (a module, a callable, a nested recovery config)."""
    if tp is bool:
        return None, True
    if tp in (int, float, str):
        return tp, False
    origin = get_origin(tp)
    if origin is Literal:
        return str, False
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            conv, is_bool = _scalar(args[0])
            if is_bool:
                return _optional(_bool_word), False
            return (_optional(conv) if conv else None), False
        return None, False
    if origin is tuple or origin is list:
        items = [a for a in get_args(tp) if a is not Ellipsis]
        if items and items[0] in (str, int, float):
            item = items[0]
            return (lambda text: tuple(item(v.strip()) for v in text.split(",") if v.strip())), False
    return None, False


def _bool_word(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in _NONE_WORDS else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _help(spec: OptionSpec, tp: Any, default: Any) -> str:
    text = spec.doc.rstrip(".").replace("%", "%%")
    allowed = ""
    if spec.choices is not None:
        allowed = "one of " + ", ".join(str(c) for c in spec.choices)
    elif spec.low is not None or spec.high is not None:
        allowed = f"range {_range_text(spec)}"
    if isinstance(default, tuple):
        default = ",".join(str(v) for v in default) or "(none)"
    parts = [f"{_type_name(tp)}", allowed, f"default: {default}"]
    return f"{text} [" + "; ".join(p for p in parts if p) + "]"


@dataclasses.dataclass(frozen=True)
class Flag:
    """One derived flag: which option of which class it sets."""

    dest: str
    option: str
    owner: type


def add_option_flags(parser: argparse.ArgumentParser | Any, cls: type, prefix: str = "",
                     skip: Sequence[str] = (), only_own: type | None = None) -> list[Flag]:
    """Add a ``--{prefix}-{option}`` flag for every recipe option of ``cls`` a flag can hold.

    ``only_own`` leaves out the options ``cls`` inherits from that base class (e.g. the
    ExportOptions every exporter shares). Every flag defaults to ``None`` (= not given, the
    declaration's default applies), and its help shows type, allowed values and that default.
    """
    hints = _hints(cls)
    inherited = {f.name for f, _ in option_fields(only_own)} if only_own else set()
    flags = []
    for f, spec in option_fields(cls):
        if not spec.recipe or f.name in skip or f.name in inherited:
            continue
        tp = hints.get(f.name, Any)
        conv, is_bool = _scalar(tp)
        if conv is None and not is_bool:
            continue
        name = "--" + "-".join(p for p in (prefix, f.name.replace("_", "-")) if p)
        dest = name[2:].replace("-", "_")
        kwargs: dict[str, Any] = {"dest": dest, "default": None,
                                  "help": _help(spec, tp, field_default(f))}
        if is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=conv, metavar=_metavar(tp, spec))
        parser.add_argument(name, **kwargs)
        flags.append(Flag(dest, f.name, cls))
    return flags


def _metavar(tp: Any, spec: OptionSpec) -> str:
    if spec.choices is not None and len(spec.choices) <= 6 and get_origin(tp) not in (tuple, list):
        return "{" + ",".join(str(c) for c in spec.choices) + "}"
    name = _type_name(tp).split(" | ")[0]
    return {"tuple[str, ...]": "A,B", "float": "X", "int": "N", "str": "TEXT"}.get(name, name.upper())


def given(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """Option name → value of the flags the user gave (left-out flags keep the declared default)."""
    return {f.option: getattr(args, f.dest) for f in flags if getattr(args, f.dest, None) is not None}


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)`` with the API's validation; the ConfigError names the flag's option."""
    try:
        return cls(**values)
    except (TypeError, ConfigError) as exc:  # TypeError: an option the class does not take
        raise ConfigError(f"{where}: {exc}") from exc


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, runs, threads)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warmup runs, epochs)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value
