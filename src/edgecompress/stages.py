"""What the pipeline measures after each stage, and how (counted or timed, never estimated)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.bundle import DataBundle
from .forms import Form
from .measure import compressed_sizes, count_macs, count_params, serialized_state, sparsity
from .options import option, validate_options
from .report import StageMetrics
from .data.inputs import head, to_device
from .training import accuracy


@dataclass
class Measure:
    """What the pipeline measures after each stage (everything on by default)."""

    accuracy: bool = option(True, "Top-1 accuracy on data.val.")
    accuracy_samples: int | None = option(None, "Cap on validation samples (None: all).", low=1)
    latency: bool = option(True, "Latency through a TorchRunner, batch 1.")
    latency_runs: int = option(30, "Timed runs for latency.", low=1)
    latency_warmup: int = option(5, "Untimed warm-up runs.", low=0)
    threads: int | None = option(None, "Threads for latency (None: torch's default).", low=1)
    macs: bool = option(True, "Count MACs with torch's FLOP counter.")
    compressed: bool = option(False, "Also measure xz/zip-compressed sizes of the weights.")

    def __post_init__(self) -> None:
        validate_options(self)


def measure_stage(model: Any, form: Form, data: DataBundle, cfg: Measure, name: str) -> StageMetrics:
    """Measure one stage's model: every field is counted or timed, none estimated."""
    if getattr(data, "task", None) == "causal_lm":  # token-id bundles: perplexity, not top-1
        from .lm.metrics import measure_lm_stage
        return measure_lm_stage(model, form, data, cfg, name)
    if form is Form.ONNX_GRAPH:
        return _measure_onnx(model, data, cfg, name)
    from .runtime.torch_runner import TorchRunner

    assert data.example_input is not None
    state = serialized_state(model)
    m = StageMetrics(stage=name, form=form.value, params=count_params(model),
                     size_bytes=len(state), sparsity=sparsity(model))
    if cfg.compressed:
        m.compressed_bytes = compressed_sizes(state)
    if cfg.macs:
        m.macs = count_macs(model, data.example_input)
    if cfg.accuracy and data.val is not None:
        m.accuracy = accuracy(model, data.val, limit_samples=cfg.accuracy_samples)
    if cfg.latency:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = head(data.example_input, 1)  # the user's real sample, not noise
        runner = TorchRunner.from_module(model, to_device(x, device), cfg.threads)
        _record_latency(m, runner.benchmark(cfg.latency_warmup, cfg.latency_runs, x=x,
                                            with_system=False))
    return m


def _record_latency(m: StageMetrics, stats: Any) -> None:
    m.latency_ms, m.latency_p10_ms, m.latency_p90_ms = stats.p50_ms, stats.p10_ms, stats.p90_ms
    m.load_1min = stats.load_1min


def _measure_onnx(model: Any, data: DataBundle, cfg: Measure, name: str) -> StageMetrics:
    from onnx import numpy_helper

    from .runtime.ort import OrtRunner

    raw = model.SerializeToString()
    params = sum(int(numpy_helper.to_array(t).size) for t in model.graph.initializer)
    m = StageMetrics(stage=name, form=Form.ONNX_GRAPH.value, params=params, size_bytes=len(raw))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stage.onnx"
        path.write_bytes(raw)
        runner = OrtRunner(path, threads=cfg.threads, verify=False)
        if cfg.accuracy and data.val is not None:
            from .export.verify import artifact_accuracy
            m.accuracy = artifact_accuracy(runner, data, cfg.accuracy_samples)
        if cfg.latency:
            _record_latency(m, runner.benchmark(cfg.latency_warmup, cfg.latency_runs,
                                                x=head(data.example_input, 1), with_system=False))
    return m
