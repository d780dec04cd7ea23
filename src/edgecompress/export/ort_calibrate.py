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
from typing import Any, Mapping, Sequence

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
                            method: str, work: Path, batch_size: int = 32,
                            known: Mapping[str, Sequence[float]] | None = None,
                            ) -> tuple[Path, CalibrationResult, dict[str, int]]:
    """Write ORT's calibration cache for ``model_path`` (on ``samples``: one input's array under
    ``input_name``, or a dict naming each input of a model with several); its path, what
    calibration left out, and where the ranges came from.

    ``known``: ranges already measured on these samples with this method (the recipe's, see
    :mod:`.recipe_ranges`), reused as they are; a tensor that shares its input's scale takes
    that range, a ``Constant``'s range comes from its value, and only the tensors left are
    calibrated by running ORT's augmented graph — not at all when none is left.
    """
    import onnx

    from .recipe_ranges import constant_values, float_tensors, shared_scale_ranges

    proto = onnx.load(str(model_path))
    wanted = float_tensors(proto)
    reused = {t: list(known[t]) for t in wanted if known and t in known and wide(*known[t])}
    shared = shared_scale_ranges(proto, reused, wanted - set(reused))
    todo = wanted - set(reused) - set(shared)
    collector = RangeCollector(method)
    constants = constant_values(proto, todo)
    feeds = as_feeds(samples, input_name)  # byom23: several named inputs (int64 ids + mask)
    inputs = {t: feeds[t] for t in todo if t in feeds}  # a graph input: the samples themselves
    rest = todo - set(constants) - set(inputs)
    run, fetch = _augmented_session(proto, rest, work) if rest else (None, [])
    for _ in range(collector.passes):
        for name, value in constants.items():
            collector.add(name, value)
        for name, value in inputs.items():
            collector.add(name, value)
        for start in range(0, sample_count(feeds) if run else 0, batch_size):
            batch = {k: v[start:start + batch_size] for k, v in feeds.items()}
            for name, value in zip(fetch, _run_augmented(run, batch, fetch)):
                collector.add(name, value)
        collector.next_pass()
    ranges = {**reused, **shared, **collector.result()}  # tensors left float (masks): no range
    path = _save_cache(ranges, method, work)
    result = collector.result_
    if result.notes():
        log.info("ONNX calibration: %s", {k: len(v) for k, v in result.notes().items()})
    sources = {"ranges_from_recipe": len(reused), "ranges_from_shared_scale": len(shared),
               "ranges_from_constants_and_inputs": len(constants) + len(inputs),
               "ranges_calibrated_at_export": len(fetch)}
    return path, result, sources


def _save_cache(ranges: Mapping[str, Sequence[float]], method: str, work: Path) -> Path:
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.array(lo, dtype=np.float32),
                             highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()}
    path = work / "calibration.json"
    save_tensors_data(TensorsData(calibration_method(method), data), path)
    return path


def wide(lo: float, hi: float, steps: int = 2048) -> bool:
    """True when [lo, hi] spans at least ``steps`` float32 steps at its magnitude. A narrower
    range (a saturated gate on random weights) is of the size of the rounding differences
    between torch's and ORT's kernels, so only ORT's own values of that tensor calibrate it."""
    magnitude = np.float32(max(abs(lo), abs(hi)))
    return bool(hi - lo >= steps * np.spacing(magnitude))


def _augmented_session(proto: Any, tensors: set[str], work: Path) -> tuple[Any | None, list[str]]:
    """A session over the float graph with ``tensors`` as extra outputs (only those: ORT keeps
    its fusions everywhere else, so the run costs about one inference), and their names."""
    import onnx
    import onnxruntime as ort

    infos = {vi.name: vi for vi in proto.graph.value_info}
    outputs = {o.name for o in proto.graph.output}
    fetch = sorted(t for t in tensors if t in infos or t in outputs)
    if not fetch:  # nothing ORT can hand out (no shape information): ORT's own path skips them too
        return None, []
    augmented = onnx.ModelProto()
    augmented.CopyFrom(proto)
    augmented.graph.output.extend(infos[t] for t in fetch if t not in outputs)
    path = work / "augmented.onnx"
    onnx.save(augmented, str(path), save_as_external_data=augmented.ByteSize() > 2**31 - 2**26)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), fetch


def _run_augmented(session: Any, feeds: dict[str, np.ndarray],
                   fetch: list[str]) -> list[np.ndarray]:
    """One calibration batch through ORT's augmented graph, fetching the tensors ``fetch``;
    ORT's own failure, said plainly."""
    try:
        return session.run(fetch, feeds)
    except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
        raise ExportError(f"ONNX Runtime cannot run the exported graph with the tensors to calibrate as "
                          f"outputs, which static INT8 calibration needs: {str(exc).strip()[:600]}"
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
