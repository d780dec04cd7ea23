"""Run a torch module (in memory, or a saved ``.ecm`` DeployableModel) behind the Runner API."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..data.inputs import call_model, named, restyle, style
from ..signature import flatten_outputs
from .base import Runner, TensorSpec


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` on the CPU (or the module's device) with no autograd.

    ``ec.load("model.ecm")`` gives one for a saved DeployableModel; ``TorchRunner.from_module``
    wraps a module in memory (this is how the report measures each stage's latency).
    ``threads`` sets torch's intra-op threads for the whole process. The example input may be a
    tensor, a tuple or a dict of tensors (the model is called ``m(x)``, ``m(*x)``, ``m(**x)``);
    :meth:`run_named` gives every output named by :func:`~edgecompress.signature.flatten_outputs`
    and :meth:`run_structured` the model's own structure (lists of dicts for detectors).
    """

    format = "torch"

    def __init__(self, path: str | Path, threads: int | None = None, **options: Any):
        self._module: nn.Module | None = options.pop("module", None)
        self._example: Any = options.pop("example_input", None)
        if self._module is not None:
            self.path = Path(path)
            self.threads = threads
            self.options = options
            self.metadata = {}
            self.inputs, self.outputs = [], []
            self.verified = None
            self._lock = threading.Lock()
            self._setup()
        else:
            super().__init__(path, threads, **options)

    @classmethod
    def from_module(cls, module: nn.Module, example_input: Any,
                    threads: int | None = None, name: str = "<module>") -> "TorchRunner":
        return cls(name, threads=threads, module=module, example_input=example_input)

    def _load(self) -> None:
        from .. import ecm_file

        saved = ecm_file.read(self.path, verify=self.options.get("verify") is not False)
        self.verified = saved.verified
        self._module = saved.model
        self._example = saved.input_spec.zeros(1)
        self.metadata = ecm_file.runtime_metadata(saved.manifest)
        self._setup()

    def _setup(self) -> None:
        assert self._module is not None and self._example is not None
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._module.eval()
        self._device = next((p.device for p in self._module.parameters()), torch.device("cpu"))
        self._style = style(self._example)
        # a model reloaded from a static torch.export program takes one batch size only
        batch = getattr(self._module, "static_batch", None)
        self.inputs = [TensorSpec(n, (batch, *t.shape[1:]), _np_dtype(t))
                       for n, t in named(self._example, self._module).items()]
        with torch.no_grad():
            out = call_model(self._module, _to(self._example, self._device))
        self.outputs = [TensorSpec(n, (None, *t.shape[1:]), str(_numpy(t[:0]).dtype))
                        for n, t in flatten_outputs(out)]

    def _call(self, feeds: Mapping[str, np.ndarray]) -> Any:
        assert self._module is not None
        values = [torch.from_numpy(v).to(self._device) for v in feeds.values()]
        with torch.no_grad():
            return call_model(self._module, restyle(values, list(feeds), self._style))

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self._call({self.inputs[0].name if self.inputs else "input": x})
        return _numpy(flatten_outputs(out)[0][1])

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: _numpy(t) for n, t in flatten_outputs(self._call(feeds))}

    def run_structured(self, x: Any) -> Any:
        """The model's output for ``x`` in its own structure (tensor, tuple, list, dict or
        ``ModelOutput`` as a dict), with every tensor as a numpy array."""
        feeds = self.check_inputs(x)
        return _structure(self._locked(self._call, feeds))


def _to(x: Any, device: torch.device) -> Any:
    from ..data.inputs import to_device
    return to_device(x, device)


def _np_dtype(t: torch.Tensor) -> str:
    return "float32" if t.dtype == torch.bfloat16 else str(t.detach()[:0].cpu().numpy().dtype)


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    # half and bfloat16 outputs come back as float32, as the runner always gave them
    return (t.float() if t.is_floating_point() else t).numpy()


def _structure(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return _numpy(out)
    if isinstance(out, Mapping):
        return {k: _structure(v) for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return type(out)(_structure(v) for v in out) if isinstance(out, list) \
            else tuple(_structure(v) for v in out)
    return out
