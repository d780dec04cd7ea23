"""ExecuTorch runner: a ``.pte`` program run by executorch's Python runtime (XNNPACK delegate).

The program is fixed at batch 1 (as exported), so the input spec reports batch 1 and
:class:`~edgecompress.runtime.base.Runner` loops over larger batches. ``threads`` sets the
size of XNNPACK's thread pool, which is process-wide in executorch's runtime: the last runner
opened decides it for every ExecuTorch program in the process.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ArtifactError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec, recorded_names, renamed

_DTYPES = {"torch.float32": "float32", "torch.float16": "float16", "torch.int64": "int64",
           "torch.int32": "int32", "torch.int8": "int8", "torch.uint8": "uint8"}


class ExecuTorchRunner(Runner):
    """Runs ``.pte`` files with ``executorch.runtime`` (CPU, XNNPACK).

    Options: ``threads`` (XNNPACK thread-pool size; None: executorch's default).
    """

    format = "executorch"

    def _load(self) -> None:
        require("executorch", "executorch", "Running an ExecuTorch program")
        self._torch = require("torch", "executorch", "Running an ExecuTorch program")
        from executorch.runtime import Runtime

        self.metadata = read_sidecar(self.path)
        if self.threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(int(self.threads))
        # the runtime prints cpuinfo diagnostics on first use: keep them out of the user's output
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                program = Runtime.get().load_program(self.path)
            except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError
                raise ArtifactError(f"ExecuTorch cannot load {self.path}: {str(exc)[:400]} (a "
                                    f"truncated file, or a program needing a backend or kernel "
                                    f"this executorch build lacks)") from exc
            self.method = program.load_method("forward")
        if self.method is None:
            raise ArtifactError(f"{self.path} has no 'forward' method")
        meta = self.method.metadata
        self.inputs = renamed([_spec(meta.input_tensor_meta(i), f"input_{i}")
                               for i in range(meta.num_inputs())],
                              recorded_names(self.metadata, "inputs"))
        self.outputs = renamed([_spec(meta.output_tensor_meta(i), f"output_{i}")
                                for i in range(meta.num_outputs())],
                               recorded_names(self.metadata, "outputs"))

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(x)])
        return out[0].numpy().copy()

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.method.execute([self._torch.from_numpy(x) for x in feeds.values()])
        return {spec.name: o.numpy().copy() for spec, o in zip(self.outputs, out)}

    def close(self) -> None:
        self.method = None


def _spec(tensor_meta: Any, name: str) -> TensorSpec:
    dtype = _DTYPES.get(str(_torch_dtype(tensor_meta)), "float32")
    return TensorSpec(name, tuple(int(d) for d in tensor_meta.sizes()), dtype)


def _torch_dtype(tensor_meta: Any) -> Any:
    try:
        return tensor_meta.dtype()
    except (AttributeError, TypeError):
        return "torch.float32"
