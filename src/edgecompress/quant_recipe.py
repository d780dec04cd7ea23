"""The quantization recipe a quantization pass records for exporters to realise natively.

Two frozen, versioned types, one per workflow (as ONNX Runtime has ``StaticQuantConfig`` and
``DynamicQuantConfig``): :class:`StaticRecipe` (PTQ and QAT: int8 weights and activations) and
:class:`DynamicRecipe` (int8 weights, activations quantized at run time). Every field an
exporter reads is typed here; there is no free-form dict between passes and exporters.
:meth:`QuantRecipe.from_metadata` also reads the manifests of version 1 (an untyped ``extra``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .quant.fakequant import W_QMAX

RECIPE_VERSION = 2


@dataclass(frozen=True)
class QuantRecipe:
    """What a quantization pass decided, independent of any export format (the common part).

    ``calib_samples`` (model inputs: a tensor, or a tuple / dict of tensors for a model that
    takes several) are kept so each exporter can calibrate with its own tool; ``ranges``
    holds learned (QAT) or observed activation ranges by tensor name (``<layer>:in/out``).
    """

    scheme: ClassVar[str] = "?"
    bits: int = 8
    per_channel: bool = True
    method: str = "minmax"  # calibration method: minmax / percentile / entropy
    backend: str = "x86"  # engine hint: x86 or arm
    skip: tuple[str, ...] = ()  # layer names the user kept in float
    source: str = "ptq"  # ptq / qat / dynamic
    skipped_layers: tuple[str, ...] = ()  # the layers kept in float, resolved
    layer_order: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (layer, weight shape) in execution
    # order: how exporters match layers to graph nodes
    reduce_range: bool = False  # 7-bit weights (x86 CPUs without VNNI saturate ORT's u8s8 kernels)
    rebuild: str | None = None  # "module:function" rebuilding the quantized model of a saved file
    calib_samples: Any = field(default=None, compare=False, repr=False)
    ranges: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one canonical form (tuples), whether built by a pass or read back from JSON lists
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "skipped_layers", tuple(self.skipped_layers))
        object.__setattr__(self, "layer_order",
                           tuple((str(name), tuple(shape)) for name, shape in self.layer_order))

    @property
    def precision(self) -> str:
        """The artifact precision this recipe asks for ('int8-static' or 'int8-dynamic')."""
        return f"int{self.bits}-{self.scheme}"

    @property
    def calib_count(self) -> int:
        """How many calibration samples the recipe carries (0: none)."""
        from .data.inputs import batch_size

        return 0 if self.calib_samples is None else batch_size(self.calib_samples)

    def replace(self, **changes: Any) -> "QuantRecipe":
        return dataclasses.replace(self, **changes)

    # -- serialisation ----------------------------------------------------------------------------
    def to_metadata(self, compact: bool = False) -> dict[str, Any]:
        """Plain data for the .ecm manifest (``compact=False``) and for artifacts (``True``).

        The manifest holds every field, versioned. Artifacts keep the layout they always had
        (``extra`` of descriptive facts, ``ranges_count`` instead of the ranges): an INT8
        artifact already holds the ranges as its scales, and on a 53k-parameter model the two
        were 4 kB of an 82 kB file.
        """
        if compact:
            return self._artifact_view()
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calib_samples"}
        d["ranges"] = {k: v for k, v in self.ranges.items() if _plain(v)}
        d.update(scheme=self.scheme, version=RECIPE_VERSION,
                 calib_count=self.calib_count)
        return _lists(d)

    @classmethod
    def from_metadata(cls, d: Mapping[str, Any],
                      calib_samples: Any = None) -> "QuantRecipe":
        """The recipe of a manifest of version 2, or of version 1 (``extra`` dict)."""
        data = dict(d)
        target = {"static": StaticRecipe, "weight": WeightOnlyRecipe}.get(
            str(data.get("scheme")), DynamicRecipe)
        if int(data.get("version", 1)) < 2:
            data = _from_v1(data)
        names = {f.name for f in dataclasses.fields(target)} - {"calib_samples"}
        kw = {k: v for k, v in data.items() if k in names}
        for key in ("layers", "calibrated_after_training"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return target(**kw, calib_samples=calib_samples)

    def _artifact_view(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scheme": self.scheme, "bits": self.bits,
                             "per_channel": self.per_channel, "method": self.method,
                             "backend": self.backend, "skip": list(self.skip),
                             "layers": list(getattr(self, "layers", ())), "source": self.source,
                             "extra": _lists(self.facts())}
        d["ranges_count"] = len([v for v in self.ranges.values() if _plain(v)])
        d["calib_count"] = self.calib_count
        return d

    def facts(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class StaticRecipe(QuantRecipe):
    """Static INT8 (PTQ or QAT): int8 weights, 8-bit activations with fixed ranges."""

    scheme: ClassVar[str] = "static"
    ranges_kind: str = "observed"  # observed (calibrated) or learned (QAT)
    outputs: Mapping[str, str | None] = field(default_factory=dict)  # layer -> "relu" when fused
    weight_qmax: int = W_QMAX
    one_quantizer_per_tensor: int = 0  # version of quantizer sharing (0: each layer its own)
    calibrated_after_training: tuple[str, ...] | None = None  # QAT: ranges calibrated at the end
    # fx could not trace the model: the simulation quantizes each Conv / Linear (weights, input;
    # a Conv's output too) and nothing between them, and exporters quantize no more than that
    layers_only: bool = False

    def facts(self) -> dict[str, Any]:
        """What artifacts record of the recipe, in the order artifacts always had it."""
        d: dict[str, Any] = {
            "skipped_layers": list(self.skipped_layers), "rebuild": self.rebuild,
            "ranges_kind": self.ranges_kind, "weight_qmax": self.weight_qmax,
            "reduce_range": self.reduce_range,
            "activations": "per-tensor asymmetric 8-bit at each quantized layer's input and "
                           "output (ranges keyed '<layer>:in' / '<layer>:out'; 'relu' "
                           "outputs are quantized after the ReLU they feed)",
            "weights": f"symmetric int8 [-{self.weight_qmax}, {self.weight_qmax}], "
                       f"{'per output channel' if self.per_channel else 'per tensor'}"}
        if self.calibrated_after_training is not None:
            d["calibrated_after_training"] = list(self.calibrated_after_training)
        d["one_quantizer_per_tensor"] = self.one_quantizer_per_tensor
        if self.layers_only:  # recorded only when set: older artifacts keep their layout
            d["layers_only"] = True
        return d


@dataclass(frozen=True)
class DynamicRecipe(QuantRecipe):
    """Dynamic INT8: int8 weights of ``layers``, activations quantized per call at run time."""

    scheme: ClassVar[str] = "dynamic"
    per_channel: bool = False
    source: str = "dynamic"
    layers: tuple[str, ...] = ()  # layer types quantized: Linear, LSTM, GRU...

    def facts(self) -> dict[str, Any]:
        return {"skipped_layers": list(self.skipped_layers), "rebuild": self.rebuild,
                "weights": "int8 per tensor", "activations": "quantized per batch at run time",
                "reduce_range": self.reduce_range}


@dataclass(frozen=True)
class WeightOnlyRecipe(QuantRecipe):
    """Weight-only (``QuantizeWeights``): group-wise integer weights, float activations.

    ``layers`` holds the names of the quantized weight tensors' modules; ``embeddings`` tells
    whether the token embedding (and a head tied to it) is quantized too.
    """

    scheme: ClassVar[str] = "weight"
    per_channel: bool = False
    source: str = "weight_only"
    group_size: int = 32
    symmetric: bool = True
    embeddings: bool = False
    layers: tuple[str, ...] = ()

    @property
    def precision(self) -> str:
        """``int4-weight`` / ``int8-weight``: what formats holding group-wise weights accept."""
        return f"int{self.bits}-weight"

    def describe(self) -> str:
        """The recipe in words (for the report's notes and logs)."""
        return (f"{self.bits}-bit {'symmetric' if self.symmetric else 'asymmetric'} weights in "
                f"groups of {self.group_size}, float activations")

    def facts(self) -> dict[str, Any]:
        """What artifacts record of the recipe."""
        return {"group_size": self.group_size, "symmetric": self.symmetric,
                "embeddings": self.embeddings, "weights": self.describe()}


def _from_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest (typed fields plus an ``extra`` dict) as version-2 fields."""
    extra = dict(d.pop("extra", None) or {})
    out = {**d, **{k: v for k, v in extra.items() if k not in ("activations", "weights")}}
    # v1 stored True for the first quantizer-sharing version and omitted it before sharing
    out["one_quantizer_per_tensor"] = int(extra.get("one_quantizer_per_tensor") or 0)
    out["layer_order"] = [tuple(x) for x in extra.get("layer_order") or ()]
    out["outputs"] = extra.get("outputs") or {}
    out.setdefault("rebuild", extra.get("rebuild"))
    return out


def _lists(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, mappings as dicts: what JSON round-trips unchanged."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in d.items()}


def _plain(v: Any) -> bool:
    if isinstance(v, (int, float, str, bool, type(None))):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


__all__ = ["DynamicRecipe", "QuantRecipe", "RECIPE_VERSION", "StaticRecipe", "WeightOnlyRecipe"]
