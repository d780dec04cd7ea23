"""The quantization recipe a quantization pass records for exporters to realise natively."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class QuantRecipe:
    """What a quantization pass decided, independent of any export format.

    ``calib_samples`` are kept so each exporter can calibrate with its own tool; ``ranges``
    holds learned (QAT) or observed activation ranges by tensor name where a pass records them.
    """

    scheme: str  # "static" or "dynamic"
    bits: int = 8
    per_channel: bool = True
    method: str = "minmax"  # calibration method: minmax / percentile / entropy
    backend: str = "x86"  # engine hint: x86 or arm
    skip: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()  # dynamic: layer types to quantize
    source: str = "ptq"  # ptq / qat / dynamic
    calib_samples: torch.Tensor | None = None
    ranges: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """The artifact precision this recipe asks for ('int8-static' or 'int8-dynamic')."""
        return f"int{self.bits}-{self.scheme}"

    def to_metadata(self, compact: bool = False) -> dict[str, Any]:
        """Plain data for the .ecm manifest and artifact metadata (no tensors).

        ``compact=True`` (artifacts) gives the number of ranges instead of the ranges, and
        drops the per-layer bookkeeping the exporters use: an INT8 artifact already holds the
        ranges as its scales, and on a 53k-parameter model the two were 4 kB of an 82 kB file.
        """
        d = asdict(self)
        d.pop("calib_samples")
        d["ranges"] = {k: v for k, v in self.ranges.items() if _plain(v)}
        if compact:
            d["ranges_count"] = len(d.pop("ranges"))
            d["extra"] = {k: v for k, v in d["extra"].items() if k not in _EXPORT_BOOKKEEPING}
        d["calib_count"] = 0 if self.calib_samples is None else int(self.calib_samples.shape[0])
        d["skip"], d["layers"] = list(self.skip), list(self.layers)
        return d

    @classmethod
    def from_metadata(cls, d: dict[str, Any], calib_samples: torch.Tensor | None = None) -> "QuantRecipe":
        """A recipe from :meth:`to_metadata`'s output (+ calibration samples, if kept)."""
        data = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "calib_samples"}
        data["skip"] = tuple(data.get("skip", ()))
        data["layers"] = tuple(data.get("layers", ()))
        return cls(**data, calib_samples=calib_samples)


_EXPORT_BOOKKEEPING = ("layer_order", "outputs")  # layer ↔ node matching, used while exporting


def _plain(v: Any) -> bool:
    if isinstance(v, (int, float, str, bool, type(None))):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False
