"""Verification of an artifact through its Runner: parity with the reference model (every
named output within its precision's bound, the task metric, the user's ``metric=``), accuracy
on the evaluation data, latency. Exporters do not verify themselves; the base class calls this.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..artifact import Parity
from ..data.bundle import DataBundle, iter_batches
from ..errors import ExportError, InputError
from ..runtime.base import LatencyStats, Runner
from ..signature import flatten_outputs
from .compare import compare
from .output_parity import FLOAT_BOUNDS, precision_class
from .tasks import MIN_METRIC

if TYPE_CHECKING:
    from ..job import ExportJob

def tolerance_for(precision: str) -> tuple[float | None, float]:
    """(max |diff| relative to the output scale, min top-1 agreement) of a classifier at
    ``precision`` (INT8: None, its bound is in quantization steps, see :mod:`.output_parity`)."""
    kind = precision_class(precision)
    rel = FLOAT_BOUNDS.get(kind) if kind != "int8" else None
    return rel, MIN_METRIC["classify"][1][kind]


def _to_torch(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to_torch(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_torch(v, device) for v in x)
    return x


def call_model(model: nn.Module, x: Any) -> Any:
    """``model`` on one batch of inputs: a tensor, a tuple (positional) or a dict (by name)."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy()


# reference outputs already computed, per model: exporting one model to several formats (or
# ec.select's candidates) runs the (slow, simulated INT8) reference once on the same samples
_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], dict[str, np.ndarray]]]" = \
    weakref.WeakKeyDictionary()


def _digest(tensors: Iterable[Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if not isinstance(t, torch.Tensor):  # a module's extra state: not a tensor
            h.update(repr(t).encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def reference_outputs(model: nn.Module, x: Any) -> dict[str, np.ndarray]:
    """The reference model's named outputs on ``x`` (named by :func:`flatten_outputs`),
    computed once per model state and inputs (both hashed: weights changed in place or other
    samples compute them again)."""
    from ..data.inputs import tensors

    key = (_digest(model.state_dict().values()), _digest(tensors(x)))
    memo = _REFERENCES.setdefault(model, {})
    if key not in memo:
        memo.clear()  # one entry per model: the newest
        memo[key] = _reference_outputs(model, x)
    return {name: value.copy() for name, value in memo[key].items()}


@torch.no_grad()
def _reference_outputs(model: nn.Module, x: Any) -> dict[str, np.ndarray]:
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = call_model(model, _to_torch(x, device))
    named = {name: _numpy(t) for name, t in flatten_outputs(out)}
    if not named:
        raise ExportError(f"the model returned {type(out).__name__}, which holds no tensors to "
                          f"verify the artifact with; return a tensor, a tuple/list or a dict "
                          f"of tensors")
    return named


def runner_inputs(runner: Runner, x: Any) -> Any:
    """``x`` as the numpy arrays ``runner`` takes: a tensor at its first input's dtype, several
    inputs (tuple, dict) as named feeds (:func:`.flat.runner_inputs`)."""
    if isinstance(x, torch.Tensor):
        return x.cpu().numpy().astype(runner.inputs[0].dtype if runner.inputs else np.float32)
    from .flat import runner_inputs as named_feeds

    return named_feeds(runner, x)


def artifact_outputs(runner: Runner, x: Any) -> dict[str, np.ndarray]:
    """The artifact's named outputs on ``x`` (its first output only when the runner cannot
    name them)."""
    inputs = runner_inputs(runner, x)
    if hasattr(runner, "run_named"):
        return {k: np.asarray(v) for k, v in runner.run_named(inputs).items()}
    return {"output": np.asarray(runner(inputs))}


def _batch_size(x: Any) -> int:
    if isinstance(x, Mapping):
        x = next(iter(x.values()))
    elif isinstance(x, (tuple, list)):
        x = x[0]
    return int(x.shape[0])


def check_parity(runner: Runner, reference: nn.Module, x: Any, precision: str,
                 reference_name: str, tolerance: float | None = None, task: str = "auto",
                 recipe: Any = None, metric: Callable[..., float] | None = None,
                 metric_threshold: float | None = None,
                 detection: Mapping[str, Any] | None = None) -> Parity:
    """Parity of ``runner``'s artifact with ``reference`` on the inputs ``x`` (``detection``:
    a detector's decode + NMS spec, see :mod:`edgecompress.detection`)."""
    ref = reference_outputs(reference, x)
    out = artifact_outputs(runner, x)
    return compare(ref, out, precision, reference_name, tolerance, task=task, recipe=recipe,
                   metric=metric, metric_threshold=metric_threshold, samples=_batch_size(x),
                   detection=detection)


def artifact_accuracy(runner: Runner, data: DataBundle | Iterable[Any] | None,
                      limit: int | None = None) -> float | None:
    """Top-1 accuracy of an artifact on labelled batches (or a bundle's ``val``) via its runner:
    per sample for (N, C) logits against (N,) labels, per pixel for (N, C, H, W) maps against
    (N, H, W) masks; None when the labels are neither."""
    loader = data.val if isinstance(data, DataBundle) else data
    if loader is None:
        return None
    correct = total = 0
    for x, y in iter_batches(loader, limit):
        if y is None:
            return None
        out = np.asarray(runner(runner_inputs(runner, x)))
        labels = y.numpy()
        predicted = out.argmax(1) if out.ndim >= 2 else out
        if predicted.shape != labels.shape and predicted.size == labels.size:
            predicted = predicted.reshape(labels.shape)  # (N, C, 1, 1) logits
        if predicted.shape != labels.shape:
            return None
        correct += int((predicted == labels).sum())
        total += int(labels.size)
    return correct / total if total else None


@dataclass
class Verification:
    """What verifying an artifact measured."""

    parity: Parity
    accuracy: float | None
    latency: LatencyStats | None
    perplexity: float | None = None  # causal LMs, through the artifact's runtime
    records: dict[str, Any] = field(default_factory=dict)  # task-specific records (metadata + notes)


def verify(runner: Runner, job: "ExportJob", precision: str, opts: Any) -> Verification:
    """Parity against ``job.reference``, accuracy on ``job.eval_data`` and latency, through
    ``runner`` (closed afterwards)."""
    try:
        parity = check_parity(runner, job.reference, job.parity_inputs, precision,
                              job.reference_name, opts.tolerance, task=getattr(opts, "task", "auto"),
                              recipe=job.recipe, metric=getattr(opts, "metric", None),
                              metric_threshold=getattr(opts, "metric_threshold", None),
                              detection=job.metadata.get("detection"))
        acc = (artifact_accuracy(runner, job.eval_data, opts.accuracy_samples)
               if parity.task in ("classify", "segment") else None)
        records = _detection_records(runner, job, parity, opts)
        latency = artifact_latency(runner, opts.benchmark_runs, x=job.example)
    finally:
        runner.close()
    return Verification(parity, acc, latency, records=records)


def _detection_records(runner: Runner, job: "ExportJob", parity: Parity, opts: Any
                       ) -> dict[str, Any]:
    """A detector's mAP and the reference's on the labelled evaluation data, when it has box
    targets (``{"detection_map": {...}}``; see :mod:`.detect_eval`)."""
    spec = job.metadata.get("detection")
    if parity.task != "detect" or not spec:
        return {}
    from .detect_eval import detection_maps

    maps = detection_maps(lambda x: artifact_outputs(runner, x),
                          lambda x: reference_outputs(job.reference, x), job.eval_data, spec,
                          job.layout, opts.accuracy_samples)
    return {"detection_map": maps} if maps else {}


def artifact_latency(runner: Runner, runs: int, warmup: int = 5,
                     x: Any = None) -> LatencyStats | None:
    """p50 (p10–p90) of ``runs`` single calls after up to ``warmup`` untimed ones (0: skip), on
    the real input ``x`` (a batch of 1) when given."""
    if not runs:
        return None
    feeds = None
    if x is not None:
        from .flat import runner_inputs
        feeds = runner_inputs(runner, x)
        feeds = next(iter(feeds.values())) if isinstance(x, torch.Tensor) else feeds
        try:
            runner.check_inputs(feeds)
        except InputError:  # the artifact takes another layout (NHWC): time a sample of it
            feeds = None
    return runner.benchmark(warmup=min(warmup, runs), runs=runs, x=feeds, with_system=False)
