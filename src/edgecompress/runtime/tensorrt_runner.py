"""TensorRT runner: deserialize an ``.engine`` and run it with torch CUDA tensors as buffers.

No pycuda: inputs and outputs are torch tensors on the GPU whose addresses are handed to the
execution context (TensorRT 10's ``set_tensor_address`` / ``execute_async_v3``) on a torch
CUDA stream. Written against TensorRT 10's documented API; it could not be run where it was
written (no GPU, no TensorRT) — see docs/formats/tensorrt.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._extras import require
from ..errors import ArtifactError, EdgeCompressError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec


class GpuUnavailableError(EdgeCompressError, RuntimeError):
    """A TensorRT engine needs a CUDA GPU and none is visible."""


class TensorRTRunner(Runner):
    """Runs ``.engine``/``.plan`` files on the first CUDA GPU (``device`` option: its index).

    ``threads`` is accepted for a uniform interface and ignored (the GPU does the work).
    """

    format = "tensorrt"

    def _load(self) -> None:
        trt = require("tensorrt", "tensorrt", "Running a TensorRT engine")
        import torch

        if not torch.cuda.is_available():
            raise GpuUnavailableError(f"{self.path.name} is a TensorRT engine, which runs only "
                                      f"on an NVIDIA GPU, and no CUDA GPU is visible here")
        self._trt, self._torch = trt, torch
        self.device = torch.device("cuda", int(self.options.get("device", 0)))
        self.metadata = self.metadata or read_sidecar(self.path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise ArtifactError(f"TensorRT {trt.__version__} cannot deserialize "
                                    f"{self.path}: the file is truncated or corrupt, or was "
                                    f"built by another TensorRT version or for another GPU. "
                                    f"Engines are not portable: rebuild it on this device")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ArtifactError(f"{self.path.name} has {len(self.inputs)} inputs and "
                                f"{len(self.outputs)} outputs; this runner handles one of each")
        self._max_batch = None
        if self.inputs[0].shape[0] is None:  # dynamic batch: the profile's max bounds a call
            self._max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0].name, 0)[2][0])

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(int(d) if d >= 0 else None for d in self.engine.get_tensor_shape(name))
        dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name))).name
        return TensorSpec(name, shape, dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._max_batch and x.shape[0] > self._max_batch:
            step = self._max_batch
            return np.concatenate([self._run(x[i:i + step]) for i in range(0, x.shape[0], step)])
        torch = self._torch
        name_in, name_out = self.inputs[0].name, self.outputs[0].name
        with torch.cuda.device(self.device):
            inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            self.context.set_input_shape(name_in, tuple(x.shape))
            out_shape = tuple(self.context.get_tensor_shape(name_out))
            out = torch.empty(out_shape, dtype=_torch_dtype(torch, self.outputs[0].dtype),
                              device=self.device)
            self.context.set_tensor_address(name_in, inp.data_ptr())
            self.context.set_tensor_address(name_out, out.data_ptr())
            # the input copy ran on the current stream: the engine's stream must wait for it
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ArtifactError(f"TensorRT failed to execute {self.path.name}")
            self.stream.synchronize()
            return out.cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "tensorrt_version": self._trt.__version__,
                "gpu": self._torch.cuda.get_device_name(self.device),
                "max_batch": self._max_batch}

    def close(self) -> None:
        for attr in ("context", "engine"):
            if hasattr(self, attr):
                delattr(self, attr)


def _torch_dtype(torch: Any, name: str) -> Any:
    return {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8,
            "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}[name]
