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
from typing import Any

import numpy as np
import torch
from torch import nn

from .._progress import progress
from .fakequant import ActQuant, float_numerics

log = logging.getLogger("edgecompress")

# ORT's defaults in create_calibrator (onnxruntime/quantization/calibrate.py)
HISTOGRAM_SETTINGS: dict[str, dict[str, Any]] = {
    "percentile": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128,
                   "percentile": 99.999},
    "entropy": {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128,
                "percentile": 99.999},
}


class _RangeCollector:
    """Min/max, or ORT's histogram of all samples at once, built in two passes.

    ORT's ``quantize_static`` hands its ``HistogramCollector`` every batch in one call, so the
    bins span the whole data's range. Fed batch by batch, the collector would take its bin
    width from the first batch and ranges would come out up to 0.5 % different. Pass 1 finds
    each tensor's range, pass 2 counts into ORT's bins over it; the percentile/entropy
    thresholds are then ORT's own ``compute_collection_result``.
    """

    def __init__(self, method: str):
        self.method = method
        self.passes = 1 if method == "minmax" else 2
        self.stage = 0
        self.minmax: dict[str, list[Any]] = {}
        self.abs_minmax: dict[str, list[Any]] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.edges: dict[str, np.ndarray] = {}

    def next_pass(self) -> None:
        self.stage += 1

    def add(self, name: str, x: torch.Tensor) -> None:
        a = x.detach().float().cpu().numpy().ravel()
        if self.stage == 0:
            _widen(self.minmax, name, a.min(), a.max())
            if self.method == "percentile":
                magnitude = np.abs(a)
                _widen(self.abs_minmax, name, magnitude.min(), magnitude.max())
            return
        if self.method == "percentile":  # np.histogram(|x|, bins) spans |x|'s own range
            lo, hi = self.abs_minmax[name]
            a = np.abs(a)
        else:  # entropy: symmetric around 0, to the largest magnitude
            hi = np.float32(max(abs(self.minmax[name][0]), abs(self.minmax[name][1])))
            lo = -hi
        hist, edges = np.histogram(a, HISTOGRAM_SETTINGS[self.method]["num_bins"], range=(lo, hi))
        self.hist[name] = hist + self.hist[name] if name in self.hist else hist
        self.edges[name] = edges.astype(np.float32)

    def result(self) -> dict[str, list[float]]:
        if self.method == "minmax":
            return {n: [float(lo), float(hi)] for n, (lo, hi) in self.minmax.items()}
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


@torch.no_grad()
def calibrate(model: nn.Module, quantizers: dict[str, ActQuant], samples: torch.Tensor,
              method: str, batch_size: int = 32, desc: str = "calibrate") -> dict[str, list[float]]:
    """Run ``samples`` through ``model`` as its float model, set each quantizer's range.

    Returns name → [lo, hi]. All ranges come from float activations with float weights, as ORT
    calibrates the float graph; the other quantizers keep their ranges.
    """
    # a quantizer shared by several names (one tensor, see share_quantizers) is observed once
    owner: dict[int, str] = {}
    for name, q in quantizers.items():
        owner.setdefault(id(q), name)
    collector = _RangeCollector(method)
    unique = {id(q): q for q in quantizers.values()}.values()
    hooks = [q.register_forward_pre_hook(lambda m, args: collector.add(owner[id(m)], args[0]))
             for q in unique]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with float_numerics(model):
            starts = range(0, samples.shape[0], batch_size)
            for stage in range(collector.passes):
                label = desc if collector.passes == 1 else f"{desc} ({stage + 1}/{collector.passes})"
                for start in progress(starts, desc=label, total=len(starts)):
                    model(samples[start:start + batch_size].to(device))
                collector.next_pass()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    found = collector.result()
    ranges = {name: found[owner[id(q)]] for name, q in quantizers.items()}
    for name, q in quantizers.items():
        q.set_range(*ranges[name])
    log.info("calibrated %d activation ranges on %d samples (%s)", len(ranges),
             samples.shape[0], method)
    return ranges
