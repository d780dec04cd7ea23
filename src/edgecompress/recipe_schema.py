"""The JSON Schema of recipe files, generated from the passes' option declarations.

``edgecompress schema`` prints it; ``docs/recipe.schema.json`` is the published copy (a test
keeps it equal to this output). Editors that read JSON Schema (VS Code's YAML extension, with
``# yaml-language-server: $schema=...``) then complete and check recipe files. The schema is a
first line of checking; :meth:`edgecompress.Pipeline.from_recipe` still validates everything
(including the cross-option rules a schema cannot express) before any work.
"""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from .options import OptionSpec, _hints, field_default, option_fields

SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def recipe_schema() -> dict[str, Any]:
    """The schema of ``{"passes": [{"pass": NAME, OPTION: VALUE, ...}, ...], "seed": N}``."""
    from .passes import PASSES, get_pass

    entries = [pass_schema(name, get_pass(name)) for name in sorted(PASSES)]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "edgecompress recipe",
        "description": "A compression pipeline as data: the passes in order, with the Python "
                       "API's pass and option names.",
        "type": "object",
        "additionalProperties": False,
        "required": ["passes"],
        "properties": {
            "seed": {"type": "integer", "description": "Seeds every pass (pass i: seed + i).",
                     "default": 0},
            "passes": {"type": "array", "minItems": 1, "items": {"oneOf": entries}},
        },
    }


def pass_schema(name: str, cls: type) -> dict[str, Any]:
    """One recipe entry: ``{"pass": name}`` plus the pass's recipe options."""
    props: dict[str, Any] = {"pass": {"const": name}}
    props.update(options_properties(cls))
    doc = (cls.__doc__ or "").strip().splitlines()
    return {"type": "object", "title": name, "description": doc[0] if doc else name,
            "required": ["pass"], "additionalProperties": False, "properties": props}


def options_properties(cls: type) -> dict[str, Any]:
    """Option name → JSON Schema of its value, for every option a recipe can hold."""
    hints = _hints(cls)
    out = {}
    for f, spec in option_fields(cls):
        if not spec.recipe:
            continue
        schema = value_schema(hints.get(f.name, Any), spec)
        schema["description"] = spec.doc
        default = field_default(f)
        if _is_json(default):
            schema["default"] = list(default) if isinstance(default, tuple) else default
        out[f.name] = schema
    return out


def value_schema(tp: Any, spec: OptionSpec | None = None) -> dict[str, Any]:
    """JSON Schema for a value of annotation ``tp`` with ``spec``'s choices and range."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [value_schema(a, spec) for a in get_args(tp)]
        options = [o for o in options if o != {}] or [{}]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if tp is bool:
        return {"type": "boolean"}
    if tp in (int, float):
        return _ranged({"type": "integer" if tp is int else "number"}, spec)
    if tp is str:
        return _choices({"type": "string"}, spec)
    if origin in (tuple, list):
        items = [a for a in get_args(tp) if a is not Ellipsis]
        item = _choices(value_schema(items[0]), spec) if items else {}
        return {"type": "array", "items": item}
    if origin is dict:
        args = get_args(tp)
        return {"type": "object",
                "additionalProperties": value_schema(args[1]) if len(args) == 2 else {}}
    recovery = _recovery_schema(tp)
    if recovery is not None:
        return recovery
    return {}  # a Python object (module, callable): the recipe cannot hold it; no constraint


def _recovery_schema(tp: Any) -> dict[str, Any] | None:
    """A ``finetune=`` hook: one object schema per recovery kind (``kind`` picks the class)."""
    from . import passes  # noqa: F401 - registers the recovery kinds the passes provide
    from .registry import recoveries
    from .training import Recovery

    if not (isinstance(tp, type) and issubclass(tp, Recovery)):
        return None
    kinds = []
    for kind in sorted(recoveries):
        props = {"kind": {"const": kind}, **options_properties(recoveries.get_object(kind))}
        kinds.append({"type": "object", "title": kind, "additionalProperties": False,
                      "properties": props, **({} if kind == "finetune" else
                                              {"required": ["kind"]})})
    return {"oneOf": kinds}


def _ranged(schema: dict[str, Any], spec: OptionSpec | None) -> dict[str, Any]:
    if spec is None:
        return schema
    if spec.choices is not None:
        return {**schema, "enum": list(spec.choices)}
    if spec.low is not None:
        schema["exclusiveMinimum" if spec.low_open else "minimum"] = spec.low
    if spec.high is not None:
        schema["exclusiveMaximum" if spec.high_open else "maximum"] = spec.high
    return schema


def _choices(schema: dict[str, Any], spec: OptionSpec | None) -> dict[str, Any]:
    if spec is not None and spec.choices is not None:
        return {**schema, "enum": list(spec.choices)}
    return schema


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
