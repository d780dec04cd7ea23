"""Activation ranges from calibration data, computed with ONNX Runtime's own algorithms.

MinMax is a running min/max. Percentile and entropy build the histograms ORT's
``HistogramCollector`` builds from all samples at once (two passes over the samples) and take
its thresholds, with the settings ``quantize_static`` uses by default, so the simulated torch
model and the ONNX artifact (which ORT calibrates again on the same samples) choose the same
ranges for the same tensors. Observing runs the float model, as ORT calibrates the float graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._progress import progress
from ..data import inputs as model_inputs
from .fakequant import MASK_FILL, ActQuant, float_numerics

log = logging.getLogger("edgecompress")

# ORT's defaults in create_calibrator (onnxruntime/quantization/calibrate.py)
HISTOGRAM_SETTINGS: dict[str, dict[str, Any]] = {
    "percentile": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128,
                   "percentile": 99.999},
    "entropy": {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128,
                "percentile": 99.999},
}


@dataclass
class CalibrationResult:
    """What calibration found: the ranges, and what it had to leave out.

    ``ignored_values``: tensor → how many non-finite or mask-fill values (±inf, ±finfo.max)
    it held; ``unquantized``: tensor → why it has no range (integer dtype, no finite value,
    mask values: an attention mask stays float), its quantizer stays off; ``narrow``:
    tensors whose range is too narrow for histogram bins, given their min/max instead.
    """

    ranges: dict[str, list[float]]
    ignored_values: dict[str, int] = field(default_factory=dict)
    unquantized: dict[str, str] = field(default_factory=dict)
    narrow: list[str] = field(default_factory=list)

    def notes(self) -> dict[str, Any]:
        """The report's view: only what is not empty."""
        found = {"ignored_non_finite_values": self.ignored_values,
                 "unquantized_tensors": self.unquantized, "narrow_range_tensors": self.narrow}
        return {k: v for k, v in found.items() if v}


class RangeCollector:
    """Min/max, or ORT's histogram of all samples at once, built in two passes.

    ORT's ``quantize_static`` hands its ``HistogramCollector`` every batch in one call, so the
    bins span the whole data's range. Fed batch by batch, the collector would take its bin
    width from the first batch and ranges would come out up to 0.5 % different. Pass 1 finds
    each tensor's range, pass 2 counts into ORT's bins over it; the percentile/entropy
    thresholds are then ORT's own ``compute_collection_result``.

    Real activations break a plain histogram; here they do not: non-finite values and mask
    fills are left out (and counted), integer tensors get no range, and a range too narrow
    for ``num_bins`` distinct float32 edges (a near-constant tensor) keeps its min/max.
    """

    def __init__(self, method: str):
        self.method = method
        self.passes = 1 if method == "minmax" else 2
        self.stage = 0
        self.minmax: dict[str, list[Any]] = {}
        self.abs_minmax: dict[str, list[Any]] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.edges: dict[str, np.ndarray] = {}
        self.result_ = CalibrationResult({})

    def next_pass(self) -> None:
        self.stage += 1

    def add(self, name: str, x: Any) -> None:
        """Observe one batch of tensor ``name`` (a torch tensor or a numpy array)."""
        a = _finite_values(self, name, x)
        if a is None:
            return
        if self.stage == 0:
            _widen(self.minmax, name, a.min(), a.max())
            if self.method == "percentile":
                magnitude = np.abs(a)
                _widen(self.abs_minmax, name, magnitude.min(), magnitude.max())
        elif name not in self.result_.narrow:
            self._count(name, a)

    def _count(self, name: str, a: np.ndarray) -> None:
        if self.method == "percentile":  # np.histogram(|x|, bins) spans |x|'s own range
            lo, hi = self.abs_minmax[name]
            a = np.abs(a)
        else:  # entropy: symmetric around 0, to the largest magnitude
            hi = np.float32(max(abs(self.minmax[name][0]), abs(self.minmax[name][1])))
            lo = -hi
        try:
            hist, edges = np.histogram(a, HISTOGRAM_SETTINGS[self.method]["num_bins"],
                                       range=(lo, hi))
        except ValueError:  # "Too many bins for data range": float32 has no distinct edges
            self.result_.narrow.append(name)
            self.hist.pop(name, None)
            return
        self.hist[name] = hist + self.hist[name] if name in self.hist else hist
        self.edges[name] = edges.astype(np.float32)

    def result(self) -> dict[str, list[float]]:
        """name → [lo, hi] for every tensor that had finite float values."""
        found = {n: [float(lo), float(hi)] for n, (lo, hi) in self.minmax.items()}
        if self.method != "minmax" and self.hist:
            found.update(self._thresholds())
        for name in found:  # finite values in a later batch
            self.result_.unquantized.pop(name, None)
        for name, count in self.result_.ignored_values.items():
            # a mask: quantized, its -inf would become the range's low end and leak through
            # the softmax; ORT's graph keeps the ops around it float too
            found.pop(name, None)
            self.result_.unquantized[name] = f"{count} mask values (±inf or beyond ±1e30)"
        self.result_.ranges = found
        return found

    def _thresholds(self) -> dict[str, list[float]]:
        from onnxruntime.quantization.calibrate import HistogramCollector

        collector = HistogramCollector(method=self.method, scenario="same",
                                       **HISTOGRAM_SETTINGS[self.method])
        for name, hist in self.hist.items():
            lo, hi = self.minmax[name]
            entry = (hist, self.edges[name], lo, hi)
            if self.method == "entropy":
                entry += (np.float32(max(abs(lo), abs(hi))),)
            collector.histogram_dict[name] = entry
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's collector prints progress
            found = collector.compute_collection_result()
        return {name: [float(np.asarray(t[0])), float(np.asarray(t[1]))]
                for name, t in found.items()}


def _widen(store: dict[str, list[Any]], name: str, lo: Any, hi: Any) -> None:
    old = store.get(name)
    store[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]


def _finite_values(collector: RangeCollector, name: str, x: Any) -> np.ndarray | None:
    """``x``'s float values as a flat float32 array without non-finite values and mask fills
    (counted in pass 1); None for an integer/bool tensor or one with no such value left."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            collector.result_.unquantized[name] = f"{x.dtype} tensor"
            return None
        x = x.detach().float().cpu().numpy()
    elif not np.issubdtype(np.asarray(x).dtype, np.floating):
        collector.result_.unquantized[name] = f"{np.asarray(x).dtype} tensor"
        return None
    a = np.asarray(x, dtype=np.float32).ravel()
    keep = np.abs(a) < MASK_FILL  # False for NaN and ±inf too
    if not keep.all():
        if collector.stage == 0:
            ignored = collector.result_.ignored_values
            ignored[name] = ignored.get(name, 0) + int(a.size - keep.sum())
        a = a[keep]
    if a.size == 0:
        if name not in collector.minmax:
            collector.result_.unquantized.setdefault(name, "no finite value")
        return None
    return a


@torch.no_grad()
def calibrate(model: nn.Module, quantizers: dict[str, ActQuant], samples: Any,
              method: str, batch_size: int = 32, desc: str = "calibrate") -> CalibrationResult:
    """Run ``samples`` through ``model`` as its float model, set each quantizer's range.

    ``samples`` are model inputs: a tensor, or a tuple / dict of tensors for a model that takes
    several (token ids and an attention mask), sliced alike into batches.

    All ranges come from float activations with float weights, as ORT calibrates the float
    graph; the other quantizers keep their ranges. A quantizer whose tensor had no finite
    float value (an integer tensor, a mask of -inf) gets no range and stays off; the result
    names those, and how many non-finite values were left out of the others' ranges.
    """
    # a quantizer shared by several names (one tensor, see share_quantizers) is observed once
    owner: dict[int, str] = {}
    for name, q in quantizers.items():
        owner.setdefault(id(q), name)
    collector = RangeCollector(method)
    unique = {id(q): q for q in quantizers.values()}.values()
    hooks = [q.register_forward_pre_hook(lambda m, args: collector.add(owner[id(m)], args[0]))
             for q in unique]
    try:
        _observe(model, samples, collector, batch_size, desc)
    finally:
        for h in hooks:
            h.remove()
    found = collector.result()
    result = collector.result_
    result.ranges = {name: found[owner[id(q)]] for name, q in quantizers.items()
                     if owner[id(q)] in found}
    for name, q in quantizers.items():
        if name in result.ranges:
            q.set_range(*result.ranges[name])
    log.info("calibrated %d activation ranges on %d samples (%s)", len(result.ranges),
             model_inputs.batch_size(samples), method)
    if result.unquantized or result.ignored_values:
        log.info("calibration left %d tensors unquantized (%s) and ignored non-finite values "
                 "in %d", len(result.unquantized), ", ".join(sorted(result.unquantized)[:8]),
                 len(result.ignored_values))
    return result


def _observe(model: nn.Module, samples: Any, collector: RangeCollector,
             batch_size: int, desc: str) -> None:
    """Run the samples through the float model once per collector pass."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with float_numerics(model):
            starts = range(0, model_inputs.batch_size(samples), batch_size)
            for stage in range(collector.passes):
                label = desc if collector.passes == 1 else f"{desc} ({stage + 1}/{collector.passes})"
                for start in progress(starts, desc=label, total=len(starts)):
                    stop = start + batch_size
                    batch = model_inputs.apply(samples, lambda t, a=start, b=stop: t[a:b].to(device))
                    model_inputs.call_model(model, batch)
                collector.next_pass()
    finally:
        model.train(was_training)
