"""Models with several inputs or structured outputs, as graph converters need them.

Converters (torch.onnx, litert-torch, torch.jit) take positional tensors and give a flat tuple
of tensors. :class:`FlatModule` calls the user's model the way it is called (``m(*x)``,
``m(**x)``) and returns its outputs flattened by :func:`~edgecompress.signature.flatten_outputs`,
so the graph's outputs carry exactly the names the Signature gives them, in every format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.inputs import call_model, restyle, style, tensors
from ..errors import ExportError
from ..job import ExportJob
from ..signature import Signature, flatten_outputs

WRAPPER_SCOPE = "model"  # the wrapped model's attribute: ONNX node names gain "/model/"


class FlatModule(nn.Module):
    """``model`` taking its inputs as positional tensors in call order (``names``) and giving
    its outputs as a flat tuple of tensors."""

    def __init__(self, model: nn.Module, names: list[str], how: str):
        super().__init__()
        self.model = model
        self.names, self.how = names, how

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = call_model(self.model, restyle(list(xs), self.names, self.how))
        return tuple(t for _, t in flatten_outputs(out))


def needs_wrapping(example: Any, signature: Signature) -> bool:
    """True unless the model takes one tensor and gives one tensor (then it converts as is)."""
    return not isinstance(example, torch.Tensor) or len(signature.outputs) != 1 \
        or signature.outputs[0].name != "output"


def graph_model(model: nn.Module, example: Any, signature: Signature
                ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The module to convert and its positional example arguments."""
    if not signature.outputs:
        raise ExportError(f"{type(model).__name__} gives no tensor outputs on the example input "
                          f"(flatten_outputs found none); a graph format needs tensors out")
    if not needs_wrapping(example, signature):
        return model, (example,)
    flat = FlatModule(model, signature.input_names, style(example)).eval()
    return flat, tuple(tensors(example))


def job_graph_model(job: ExportJob, model: nn.Module | None = None
                    ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """:func:`graph_model` for an export job (``model`` defaults to ``job.source``)."""
    return graph_model(job.source if model is None else model, job.example, job.signature)


def runner_inputs(runner: Any, x: Any) -> dict[str, np.ndarray]:
    """Model inputs ``x`` (tensor, tuple or dict) as the runner's named numpy inputs, each cast
    to the dtype the artifact declares (float64 data to a float32 graph, as before)."""
    arrays = [t.detach().cpu().numpy() for t in tensors(x)]
    specs = list(getattr(runner, "inputs", []) or [])
    if len(specs) != len(arrays):
        return {f"input_{i}": a for i, a in enumerate(arrays)} if len(arrays) > 1 \
            else {"input": arrays[0]}
    return {s.name: a.astype(s.dtype, copy=False) for s, a in zip(specs, arrays)}


__all__ = ["FlatModule", "graph_model", "job_graph_model", "needs_wrapping", "runner_inputs"]


def named_outputs(runner: Any, x: Any) -> dict[str, np.ndarray]:
    """Every output of ``runner`` for model inputs ``x``, by name (``{"output": ...}`` for a
    plugin runner without :meth:`~edgecompress.runtime.base.Runner.run_named`)."""
    feeds = runner_inputs(runner, x)
    if hasattr(runner, "run_named"):
        return runner.run_named(feeds)
    return {"output": np.asarray(runner(next(iter(feeds.values()))))}


@torch.no_grad()
def reference_named(model: nn.Module, x: Any) -> list[tuple[str, np.ndarray]]:
    """The reference model's outputs for ``x``, named by ``flatten_outputs``."""
    from ..data.inputs import to_device

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = call_model(model.eval(), to_device(x, device))
    return [(n, t.detach().float().cpu().numpy()) for n, t in flatten_outputs(out)]


def named_parity(runner: Any, reference: nn.Module, x: Any, compare: Any, precision: str,
                 reference_name: str, tolerance: float | None = None) -> Any:
    """Parity of every output (matched by name, else by position) under ``compare`` (the
    verifier's ``compare(ref, out, precision, reference_name, tolerance)``); the worst one is
    returned (a failing one first), each is logged. Used for models with several inputs or
    outputs until per-output parity records land in ``export/verify.py``."""
    import logging

    ref = reference_named(reference, x)
    got = named_outputs(runner, x)
    values = list(got.values())
    results = []
    for i, (name, r) in enumerate(ref):
        out = got.get(name, values[i] if i < len(values) else np.zeros((0,)))
        p = compare(r, np.asarray(out, dtype=np.float64), precision, reference_name, tolerance)
        logging.getLogger("edgecompress").info("parity of output %r: max|diff| %.3g, %s", name,
                                               p.max_abs_diff, "PASS" if p.passed else "FAIL")
        results.append(p)
    if not results:
        raise ExportError("the reference model gave no tensor outputs to compare")
    return max(results, key=lambda p: (not p.passed, p.max_abs_diff))
