"""Where a converted module came from, carried on the module itself.

``from_onnx`` / ``from_keras`` set :data:`SOURCE_ATTR` on the module they return: a small dict
(what it was converted from, with which tools, the parity measured against the original on the
user's samples, the input layout). ``Pipeline.run`` copies it into the report's ``input`` stage
and takes the layout for the artifact's input signature from it, so nothing else needs to know
about conversions. A plain attribute survives ``copy.deepcopy``, which every pass starts from.
"""

from __future__ import annotations

from typing import Any

from torch import nn

SOURCE_ATTR = "edgecompress_source"


def attach(module: nn.Module, info: dict[str, Any]) -> nn.Module:
    setattr(module, SOURCE_ATTR, dict(info))
    return module


def source_of(model: Any) -> dict[str, Any]:
    """The conversion facts of ``model`` ({} for a module written in PyTorch)."""
    info = getattr(model, SOURCE_ATTR, None)
    return dict(info) if isinstance(info, dict) else {}


def check_input_shape(info: dict[str, Any], example: Any) -> None:
    """DataError when the data's example input does not fit a converted model's single input
    (typically NCHW data for a Keras model, which takes NHWC)."""
    from ..errors import DataError

    inputs = info.get("inputs") or []
    if len(inputs) != 1 or example is None or not hasattr(example, "shape"):
        return
    want = inputs[0]["shape"][1:]
    got = list(example.shape[1:])
    if len(want) == len(got) and all(w in (None, g) for w, g in zip(want, got)):
        return
    shape = ", ".join("?" if w is None else str(w) for w in want)
    fix = ("build the data in that layout, e.g. ec.data.image_folder(..., layout='NHWC')"
           if info.get("layout") == "NHWC" else "resize or reshape the data")
    raise DataError(f"the model converted from {info.get('converted_from')} takes inputs of "
                    f"shape (N, {shape}) ({info.get('layout') or 'as the original'}), but the "
                    f"data gives (N, {', '.join(map(str, got))}); {fix}")
