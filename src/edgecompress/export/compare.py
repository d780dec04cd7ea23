"""The parity verdict: every named output within its bound, the task metric above its minimum,
and the user's ``metric=`` above its threshold (see :mod:`.output_parity` and :mod:`.tasks`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..artifact import Parity
from ..errors import ConfigError
from .output_parity import (OutputParity, compare_output, pair_outputs, precision_class,
                            recipe_output_range)
from .tasks import MIN_METRIC, TASKS, TaskResult, infer_task, primary, task_metric, user_metric

Outputs = Mapping[str, np.ndarray]
_DETECTION_KEYS = ("boxes", "scores", "labels")


def _named(x: Outputs | np.ndarray) -> dict[str, np.ndarray]:
    return dict(x) if isinstance(x, Mapping) else {"output": np.asarray(x)}


def resolve_task(task: str, ref: Outputs) -> str:
    """``task`` as declared, or the one the reference outputs look like (``"auto"``)."""
    if task == "auto":
        return infer_task(ref)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected auto or one of {', '.join(TASKS)}")
    return task


def _unbounded(task: str, name: str) -> bool:
    """Detection outputs after NMS vary in count: the detection metric judges them."""
    return task == "detect" and name.rsplit("_", 1)[-1] in _DETECTION_KEYS


def compare(ref: Outputs | np.ndarray, out: Outputs | np.ndarray, precision: str,
            reference: str, tolerance: float | None = None, *, task: str = "auto",
            recipe: Any = None, metric: Callable[..., float] | None = None,
            metric_threshold: float | None = None, samples: int | None = None,
            detection: Mapping[str, Any] | None = None) -> Parity:
    """Parity of the artifact outputs ``out`` against the reference outputs ``ref`` (named
    outputs, or one array each) under the bounds of ``precision``. ``detection``: the
    artifact's decode + NMS spec (a detector's raw head: its task is ``detect``)."""
    ref, out = _named(ref), _named(out)
    task = "detect" if detection and task == "auto" else resolve_task(task, ref)
    ranges = recipe_output_range(recipe, list(ref))
    records = [_output(name, r, o, precision, tolerance, ranges.get(name), task)
               for name, r, o in pair_outputs(ref, out)]
    result, metric_problem = _task_result(task, ref, out, precision, _tie_margin(records, ref),
                                          detection)
    mine = user_metric(metric, metric_threshold, ref, out) if metric is not None else None
    failures = [f"{r.name}: {r.reason}" for r in records if not r.passed]
    failures += [metric_problem] if metric_problem else []
    if not result.passed and not metric_problem:
        failures.append(f"{result.metric.replace('_', ' ')} {100 * result.value:.2f}% < "
                        f"{100 * result.minimum:.2f}%")
    if mine is not None and not mine["passed"]:
        failures.append(f"{mine['name']} {mine['value']:.4g} < {mine['threshold']:.4g}")
    return _parity(records, result, mine, failures, reference,
                   samples if samples is not None else _samples(ref))


def _output(name: str, r: np.ndarray, o: np.ndarray | None, precision: str,
            tolerance: float | None, recipe_range: Any, task: str) -> OutputParity:
    if o is None:
        return OutputParity(name, list(r.shape), float("inf"), float("inf"), float("inf"), 0.0,
                            None, passed=False, reason="the artifact does not give this output")
    return compare_output(name, r, o, precision, tolerance, recipe_range,
                          bounded=not _unbounded(task, name))


def _tie_margin(records: list[OutputParity], ref: Outputs) -> float:
    """One quantization step of the scored output (INT8), else its allowed |diff|: top-1 flips
    between classes the reference separates by less are ties."""
    name = primary(ref)[0]
    record = next((r for r in records if r.name == name), None)
    if record is None:
        return 0.0
    return float(record.step if record.step is not None else (record.bound or 0.0))


def _task_result(task: str, ref: Outputs, out: Outputs, precision: str, tie_margin: float = 0.0,
                 detection: Mapping[str, Any] | None = None) -> tuple[TaskResult, str | None]:
    try:
        return task_metric(task, ref, out, precision, tie_margin, detection), None
    except (ValueError, IndexError, KeyError) as exc:  # the outputs cannot be compared at all
        name = MIN_METRIC[task][0]
        result = TaskResult(task, name, 0.0, MIN_METRIC[task][1][precision_class(precision)])
        return result, f"{name.replace('_', ' ')} not measurable: {exc}"


def _samples(ref: Outputs) -> int:
    first = primary(ref)[1]
    return int(first.shape[0]) if first.ndim else 1


def _parity(records: list[OutputParity], result: TaskResult, mine: dict[str, Any] | None,
            failures: list[str], reference: str, samples: int) -> Parity:
    finite = [r for r in records if np.isfinite(r.max_abs_diff)] or records
    head = next((r for r in records if r.bound is not None), records[0] if records else None)
    return Parity(
        max_abs_diff=max((r.max_abs_diff for r in finite), default=0.0),
        mean_abs_diff=max((r.mean_abs_diff for r in finite), default=0.0),
        top1_agreement=result.value, samples=samples, reference=reference,
        max_allowed_diff=head.bound if head is not None else None,
        min_agreement=result.minimum, passed=not failures, task=result.task,
        metric=result.metric, metric_value=result.value, min_metric=result.minimum,
        metric_extra=dict(result.extra), outputs=[r.to_dict() for r in records],
        user_metric=mine, failures=failures)


__all__ = ["compare", "resolve_task"]
