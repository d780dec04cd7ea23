"""The description of one model input or output (a leaf of the runtime: no runner needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None or a name for a dynamic dimension) and numpy dtype name of a tensor."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


__all__ = ["TensorSpec"]
