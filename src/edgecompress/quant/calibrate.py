"""Activation ranges from calibration data, computed with ONNX Runtime's own algorithms.

MinMax is a running min/max. Percentile and entropy feed the activations to ORT's
``HistogramCollector`` with the settings ``quantize_static`` uses by default, so the simulated
torch model and the ONNX artifact (which ORT calibrates again on the same samples) choose the
same ranges for the same tensors.
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
from .simulate import ActQuant

log = logging.getLogger("edgecompress")

# ORT's defaults in create_calibrator (onnxruntime/quantization/calibrate.py)
HISTOGRAM_SETTINGS: dict[str, dict[str, Any]] = {
    "percentile": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128,
                   "percentile": 99.999},
    "entropy": {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128,
                "percentile": 99.999},
}


class _RangeCollector:
    def __init__(self, method: str):
        self.method = method
        self.minmax: dict[str, list[float]] = {}
        self.histograms = None
        if method != "minmax":
            from onnxruntime.quantization.calibrate import HistogramCollector

            self.histograms = HistogramCollector(method=method, scenario="same",
                                                 **HISTOGRAM_SETTINGS[method])

    def add(self, name: str, x: torch.Tensor) -> None:
        if self.histograms is None:
            lo, hi = float(x.min()), float(x.max())
            old = self.minmax.get(name)
            self.minmax[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
            return
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's collector prints progress
            self.histograms.collect({name: [x.detach().float().cpu().numpy()]})

    def result(self) -> dict[str, list[float]]:
        if self.histograms is None:
            return self.minmax
        with contextlib.redirect_stdout(io.StringIO()):
            found = self.histograms.compute_collection_result()
        return {name: [float(np.asarray(t[0])), float(np.asarray(t[1]))]
                for name, t in found.items()}


@torch.no_grad()
def calibrate(model: nn.Module, quantizers: dict[str, ActQuant], samples: torch.Tensor,
              method: str, batch_size: int = 32, desc: str = "calibrate") -> dict[str, list[float]]:
    """Run ``samples`` through ``model`` with quantization off, set each quantizer's range.

    Returns name → [lo, hi]. All ranges come from float activations, as ORT calibrates the
    float graph; quantization is switched on only afterwards.
    """
    # a quantizer shared by several names (one tensor, see share_quantizers) is observed once
    owner: dict[int, str] = {}
    for name, q in quantizers.items():
        owner.setdefault(id(q), name)
        q.ready = False
    collector = _RangeCollector(method)
    unique = {id(q): q for q in quantizers.values()}.values()
    hooks = [q.register_forward_pre_hook(lambda m, args: collector.add(owner[id(m)], args[0]))
             for q in unique]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        starts = range(0, samples.shape[0], batch_size)
        for start in progress(starts, desc=desc, total=len(starts)):
            model(samples[start:start + batch_size].to(device))
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
