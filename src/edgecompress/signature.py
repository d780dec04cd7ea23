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
    def of(cls, model: "torch.nn.Module", example: "torch.Tensor", input_name: str = "input",
           output_name: str = "output", layout: str | None = "NCHW") -> "Signature":
        """The signature of a single-input model, by running it once on ``example``; its
        outputs are named by :func:`flatten_outputs`."""
        import torch

        with torch.no_grad():
            out = model.eval()(example)
        dtype = str(example.numpy().dtype) if example.device.type == "cpu" else "float32"
        outputs = tuple(TensorSig(name, (None, *t.shape[1:]), str(t.dtype).replace("torch.", ""))
                        for name, t in flatten_outputs(out, output_name))
        return cls((TensorSig(input_name, (None, *example.shape[1:]), dtype, layout),), outputs)


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


@dataclass
class InputSpec:
    """Name, shape (with a batch of 1), dtype and layout of the model's input."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = "input"
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (JSON-safe)."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        """The spec from :meth:`to_dict`'s output."""
        return cls(shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                   name=d.get("name", "input"), layout=d.get("layout", "NCHW"))

    @classmethod
    def checked(cls, d: Any, path: Any) -> "InputSpec":
        """From a manifest's ``input_spec``, refusing shapes no real model takes (a crafted
        ``[1, 1e12]`` would otherwise allocate the example input)."""
        from .errors import ArtifactError
        from .metadata import check_input_shape

        check_input_shape(d if isinstance(d, dict) else {"shape": None}, path)
        if str(d.get("dtype", "float32")) not in ("float32", "float16", "float64", "uint8", "int64"):
            raise ArtifactError(f"{path}: input_spec dtype {d.get('dtype')!r} is not supported")
        return cls.from_dict(d)

    @classmethod
    def from_tensor(cls, x: "torch.Tensor", layout: str = "NCHW") -> "InputSpec":
        """The spec of an example input tensor (shape, dtype, layout)."""
        return cls(shape=(1, *x.shape[1:]), dtype=str(x.numpy().dtype) if x.device.type == "cpu"
                   else "float32", layout=layout)


__all__ = ["InputSpec", "Signature", "TensorSig", "flatten_outputs"]
