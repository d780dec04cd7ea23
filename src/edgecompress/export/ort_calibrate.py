"""Activation ranges for ONNX Runtime's static quantizer, robust to real activations.

ORT's own calibrators crash on tensors real models produce: ``np.histogram`` raises "Too many
bins for data range" on a near-constant tensor and "autodetected range of [0.0, inf] is not
finite" on an attention mask, and its histogram collector stacks the batches with
``np.asarray``, which fails when the last batch is smaller (samples not a multiple of the
batch size). Here ORT's augmented calibration graph (every float tensor an output) is run on
the samples and the values go to :class:`~edgecompress.quant.calibrate.RangeCollector` — the
same code that calibrates the simulated torch model, with ORT's histogram algorithms and
thresholds — and the ranges reach ``quantize_static`` through its calibration cache.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..quant.calibrate import CalibrationResult, RangeCollector
from .ort_quant import Samples, as_feeds, calibration_method, sample_count

log = logging.getLogger("edgecompress")


def supports_cache() -> bool:
    """True when this ONNX Runtime's ``quantize_static`` reads a calibration cache."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def equal_batch_size(n: int, limit: int = 32) -> int:
    """The largest batch size up to ``limit`` that splits ``n`` samples into equal batches
    (ORT's histogram collector cannot stack batches of different sizes)."""
    return max(b for b in range(1, min(limit, n) + 1) if n % b == 0)


def write_calibration_cache(model_path: Path, samples: Samples, input_name: str | None,
                            method: str, work: Path,
                            batch_size: int = 32) -> tuple[Path, CalibrationResult]:
    """Calibrate ``model_path`` on ``samples`` (one input's array under ``input_name``, or a
    dict naming each input of a model with several); write ORT's calibration cache; its path
    and what calibration left out."""
    from onnxruntime.quantization.calibrate import (TensorData, TensorsData, create_calibrator,
                                                    save_tensors_data)

    # a histogram calibrator's augmented graph outputs each float tensor itself
    calibrator = create_calibrator(model_path, None,
                                   augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=calibration_method("percentile"))
    names = [o.name for o in calibrator.infer_session.get_outputs()]
    wanted = set(calibrator.tensors_to_calibrate)
    collector = RangeCollector(method)
    feeds = as_feeds(samples, input_name)  # byom23: several named inputs (int64 ids + mask)
    for _ in range(collector.passes):
        for start in range(0, sample_count(feeds), batch_size):
            outputs = _run_augmented(calibrator.infer_session,
                                     {k: v[start:start + batch_size] for k, v in feeds.items()})
            for name, value in zip(names, outputs):
                if name in wanted:
                    collector.add(name, value)
        collector.next_pass()
    ranges = collector.result()  # tensors left float (masks) have no range
    data = {name: TensorData(lowest=np.array(lo, dtype=np.float32),
                             highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()}
    path = work / "calibration.json"
    save_tensors_data(TensorsData(calibration_method(method), data), path)
    result = collector.result_
    if result.notes():
        log.info("ONNX calibration: %s", {k: len(v) for k, v in result.notes().items()})
    return path, result


def _run_augmented(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One calibration batch through ORT's augmented graph; ORT's own failure, said plainly."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
        raise ExportError(f"ONNX Runtime cannot run the exported graph with every tensor as an "
                          f"output, which static INT8 calibration needs: {str(exc).strip()[:600]}"
                          f". Try QuantizeDynamic, another format, or keep the failing part in "
                          f"float (skip=[...])") from exc


def mask_nodes(proto: Any, result: CalibrationResult | None) -> list[str]:
    """Nodes that produce or read a tensor calibration left float (a mask with -inf, an empty
    tensor) or a constant holding non-finite values: ORT would quantize them with an infinite
    range (inf scale, NaN zero point), so they stay float, as the simulated model keeps them."""
    from onnx import TensorProto, numpy_helper

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    tensors = set(result.unquantized) if result is not None else set()
    for init in proto.graph.initializer:
        if init.data_type in floats:
            values = numpy_helper.to_array(init)
            if values.size and not np.isfinite(values).all():
                tensors.add(init.name)
    return [n.name for n in proto.graph.node
            if tensors & (set(n.input) | set(n.output)) and n.name]


def calibration_notes(result: CalibrationResult | None) -> dict[str, Any]:
    """The export notes' view of what calibration left out (nothing when it left out nothing)."""
    return {} if result is None else result.notes()
