"""Run a torch module (in memory, or a saved ``.ecm`` DeployableModel) behind the Runner API."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Runner, TensorSpec


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` on the CPU (or the module's device) with no autograd.

    ``ec.load("model.ecm")`` gives one for a saved DeployableModel; ``TorchRunner.from_module``
    wraps a module in memory (this is how the report measures each stage's latency).
    ``threads`` sets torch's intra-op threads for the whole process.
    """

    format = "torch"

    def __init__(self, path: str | Path, threads: int | None = None, **options: Any):
        self._module: nn.Module | None = options.pop("module", None)
        self._example: torch.Tensor | None = options.pop("example_input", None)
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
    def from_module(cls, module: nn.Module, example_input: torch.Tensor,
                    threads: int | None = None, name: str = "<module>") -> "TorchRunner":
        return cls(name, threads=threads, module=module, example_input=example_input)

    def _load(self) -> None:
        from .. import ecm_file

        saved = ecm_file.read(self.path, verify=self.options.get("verify") is not False)
        self.verified = saved.verified
        self._module = saved.model
        self._example = torch.zeros((1, *saved.input_spec.shape[1:]))
        self.metadata = ecm_file.runtime_metadata(saved.manifest)
        self._setup()

    def _setup(self) -> None:
        assert self._module is not None and self._example is not None
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._module.eval()
        self._device = next((p.device for p in self._module.parameters()), torch.device("cpu"))
        # a model reloaded from a static torch.export program takes one batch size only
        shape = (getattr(self._module, "static_batch", None), *self._example.shape[1:])
        self.inputs = [TensorSpec("input", shape, str(self._example.numpy().dtype))]
        with torch.no_grad():
            out = self._module(self._example.to(self._device))
        self.outputs = [TensorSpec("output", (None, *out.shape[1:]), "float32")]

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        assert self._module is not None
        out = self._module(torch.from_numpy(x).to(self._device))
        return out.detach().float().cpu().numpy()
