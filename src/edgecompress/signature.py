"""A model's signature: its named inputs and outputs with dtypes and shapes.

A leaf type shared by the pipeline (which records it), the exporters (which write graphs with
those names) and parity checks. ``None`` in a shape is a dimension of any size (the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorSig:
    """One named tensor: shape (``None`` = any size), dtype, and layout for images."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            d["layout"] = self.layout
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSig":
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"), d.get("layout"))


@dataclass(frozen=True)
class Signature:
    """The named inputs and outputs of a model, in call order."""

    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Signature":
        return cls(tuple(TensorSig.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSig.from_dict(t) for t in d["outputs"]))

    @classmethod
    def of(cls, model: "torch.nn.Module", example: Any, input_name: str = "input",
           output_name: str = "output", layout: str | None = "NCHW") -> "Signature":
        """The signature of a model, by running it once on ``example``: a tensor (one input
        called ``input_name``), a tuple (named after ``model.forward``'s parameters) or a dict
        of named tensors. ``layout`` applies to 4-D floating-point inputs (images); the outputs
        are named by :func:`flatten_outputs`."""
        import torch

        from .data.inputs import call_model

        with torch.no_grad():
            out = call_model(model.eval(), example)
        outputs = tuple(TensorSig(name, (None, *t.shape[1:]), _dtype(t))
                        for name, t in flatten_outputs(out, output_name))
        return cls(input_sigs(example, model, input_name, layout), outputs)


def _dtype(t: "torch.Tensor") -> str:
    return str(t.dtype).replace("torch.", "")


def input_sigs(example: Any, model: Any = None, input_name: str = "input",
               layout: str | None = "NCHW", batch: int | None = None) -> tuple[TensorSig, ...]:
    """The named inputs of ``example`` (see :meth:`Signature.of`), batch dimension ``batch``."""
    import torch

    from .data.inputs import named

    one = isinstance(example, torch.Tensor)  # a single input keeps the layout it was given
    return tuple(TensorSig(n, (batch, *t.shape[1:]), _dtype(t),
                           layout if one or (t.dim() == 4 and t.is_floating_point()) else None)
                 for n, t in named(example, model, input_name).items())


def flatten_outputs(out: Any, name: str = "output") -> list[tuple[str, "torch.Tensor"]]:
    """A model's outputs as named tensors, by one rule for every format and runner.

    A tensor is ``name``; a mapping (a dict, a Hugging Face ``ModelOutput``) gives its keys, in
    order, skipping ``None`` values; a tuple or list gives ``name_0``, ``name_1``...; nested
    containers join the names with ``_`` (``output_0_boxes``). Anything else is left out.
    """
    import torch

    if isinstance(out, torch.Tensor):
        return [(name, out)]
    if isinstance(out, Mapping):
        top = name == "output"  # a model's own keys name its outputs (``logits``)
        return [pair for key, value in out.items() if value is not None
                for pair in flatten_outputs(value, str(key) if top else f"{name}_{key}")]
    if isinstance(out, (tuple, list)):
        return [pair for i, value in enumerate(out) for pair in flatten_outputs(value, f"{name}_{i}")]
    return []


INPUT_DTYPES = ("float32", "float16", "float64", "bfloat16", "uint8", "int8", "int32", "int64",
                "bool")


@dataclass
class InputSpec:
    """The model's inputs: name, shape (with a batch of 1), dtype and layout of the first, and,
    for a model that takes several (a tuple or a dict), every one of them in ``inputs`` and how
    it is called in ``style`` (``"tensor"``, ``"tuple"`` or ``"dict"``)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = "input"
    layout: str = "NCHW"
    inputs: tuple[TensorSig, ...] = ()
    style: str = "tensor"

    @property
    def all(self) -> tuple[TensorSig, ...]:
        """Every input, in call order (the first alone for a single-tensor model)."""
        return self.inputs or (TensorSig(self.name, tuple(self.shape), self.dtype, self.layout),)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (JSON-safe); old readers see the first input's fields."""
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                             "layout": self.layout}
        if self.style != "tensor":
            d.update(style=self.style, inputs=[t.to_dict() for t in self.inputs])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        """The spec from :meth:`to_dict`'s output (files written before multi-input too)."""
        return cls(shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                   name=d.get("name", "input"), layout=d.get("layout", "NCHW"),
                   inputs=tuple(TensorSig.from_dict(t) for t in d.get("inputs") or ()),
                   style=d.get("style", "tensor"))

    @classmethod
    def checked(cls, d: Any, path: Any) -> "InputSpec":
        """From a manifest's ``input_spec``, refusing shapes no real model takes (a crafted
        ``[1, 1e12]`` would otherwise allocate the example input)."""
        from .errors import ArtifactError
        from .metadata import check_input_shape

        d = d if isinstance(d, dict) else {"shape": None}
        for one in [d, *(d.get("inputs") or [])]:
            check_input_shape(one if isinstance(one, dict) else {"shape": None}, path)
            if str(one.get("dtype", "float32")) not in INPUT_DTYPES:
                raise ArtifactError(f"{path}: input_spec dtype {one.get('dtype')!r} is not "
                                    f"supported (one of {', '.join(INPUT_DTYPES)})")
        if d.get("style", "tensor") not in ("tensor", "tuple", "dict"):
            raise ArtifactError(f"{path}: input_spec style {d.get('style')!r} is not supported")
        return cls.from_dict(d)

    @classmethod
    def from_tensor(cls, x: "torch.Tensor", layout: str = "NCHW") -> "InputSpec":
        """The spec of an example input tensor (shape, dtype, layout)."""
        return cls(shape=(1, *x.shape[1:]), dtype=_dtype(x), layout=layout)

    @classmethod
    def from_example(cls, x: Any, model: Any = None, layout: str = "NCHW") -> "InputSpec":
        """The spec of example model inputs: a tensor, a tuple or a dict of tensors."""
        import torch

        from .data.inputs import style

        if isinstance(x, torch.Tensor):
            return cls.from_tensor(x, layout)
        sigs = input_sigs(x, model, layout=layout, batch=1)
        first = sigs[0]
        return cls(shape=tuple(first.shape), dtype=first.dtype, name=first.name,
                   layout=first.layout or layout, inputs=sigs, style=style(x))

    def zeros(self, batch_size: int = 1) -> Any:
        """Zero inputs of this spec (ones for masks would be nicer, but zeros are valid ids)."""
        import torch

        from .data.inputs import restyle

        values = [torch.zeros((batch_size, *t.shape[1:]), dtype=getattr(torch, t.dtype))
                  for t in self.all]
        return restyle(values, [t.name for t in self.all], self.style)


__all__ = ["InputSpec", "Signature", "TensorSig", "flatten_outputs", "input_sigs"]
