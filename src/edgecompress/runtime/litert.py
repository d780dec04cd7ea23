"""LiteRT (TensorFlow Lite) runner on ``ai_edge_litert``'s Interpreter.

XNNPACK is LiteRT's default CPU delegate: with the default op resolver the Interpreter applies
it to every op it supports (the runtime logs "Created TensorFlow Lite XNNPACK delegate for CPU").
Full-integer models take and give int8 tensors; this runner quantizes float inputs and
dequantizes int8 outputs with the tensors' own scale and zero point, so callers pass and get
float unless they ask for ``raw=True``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ArtifactError, InputError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec, recorded_names, renamed

_FLATBUFFER_ID = b"TFL3"  # file identifier every TFLite flatbuffer carries at bytes 4..8


def check_tflite_bytes(data: bytes, where: str) -> None:
    """Refuse bytes that cannot be a TFLite flatbuffer, with a reason a user can act on."""
    if len(data) < 8 or data[4:8] != _FLATBUFFER_ID:
        raise ArtifactError(f"{where} is not a TFLite model: it lacks the 'TFL3' flatbuffer "
                            f"identifier ({len(data)} bytes; empty, truncated or another file "
                            f"type). Re-export it with dm.export('tflite', ...)")


def quantize_array(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float → integer with a tensor's affine parameters (round to nearest, saturate)."""
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


class LiteRTRunner(Runner):
    """Runs ``.tflite`` files with the LiteRT Interpreter (``ai_edge_litert``).

    Options: ``threads`` (interpreter threads; None lets LiteRT choose), ``raw`` (pass and get
    the model's own int8 tensors instead of float; default False), ``xnnpack`` (keep the
    default XNNPACK delegate, default True; False runs LiteRT's own builtin kernels).
    """

    format = "tflite"

    def _load(self) -> None:
        litert = require("ai_edge_litert.interpreter", "tflite", "Running .tflite files")
        data = self.path.read_bytes()
        check_tflite_bytes(data, str(self.path))
        self.raw = bool(self.options.get("raw", False))
        self.xnnpack = bool(self.options.get("xnnpack", True))
        resolver = (litert.OpResolverType.AUTO if self.xnnpack
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self.interpreter = litert.Interpreter(
                model_content=data, num_threads=int(self.threads) if self.threads else None,
                experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"LiteRT cannot load {self.path} (truncated or corrupt .tflite?): "
                                f"{str(exc)[:400]}") from exc
        self._in = _call_order(self.interpreter.get_input_details())
        self._out = _call_order(self.interpreter.get_output_details())
        self.metadata = self.metadata or read_sidecar(self.path)
        # LiteRT's own tensor names are generated (serving_default_args_0:0): the exporter
        # records the model's names, in the same order
        self.inputs = renamed([self._spec(d) for d in self._in],
                              recorded_names(self.metadata, "inputs"))
        self.outputs = renamed([self._spec(d) for d in self._out],
                               recorded_names(self.metadata, "outputs"))

    def _spec(self, detail: dict[str, Any]) -> TensorSpec:
        dtype = np.dtype(detail["dtype"])
        if not self.raw and _is_quantized(detail):
            dtype = np.dtype(np.float32)  # the runner converts at the boundary
        return TensorSpec(detail["name"], tuple(int(d) for d in detail["shape"]), dtype.name)

    @property
    def int8_io(self) -> bool:
        """True when the model's own input or output tensors are integer-quantized."""
        return any(_is_quantized(d) for d in (*self._in, *self._out))

    def _run(self, x: np.ndarray) -> np.ndarray:
        self._set(self._in[0], x)
        self.interpreter.invoke()
        return self._get(self._out[0])

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for detail, x in zip(self._in, feeds.values()):
            self._set(detail, x)
        self.interpreter.invoke()
        return {spec.name: self._get(d) for spec, d in zip(self.outputs, self._out)}

    def _set(self, detail: dict[str, Any], x: np.ndarray) -> None:
        if _is_quantized(detail) and not self.raw:
            scale, zero_point = detail["quantization"]
            x = quantize_array(x, scale, zero_point, np.dtype(detail["dtype"]))
        try:
            self.interpreter.set_tensor(detail["index"], x)
        except ValueError as exc:  # shape or dtype LiteRT refuses
            raise InputError(f"{self.path.name}: LiteRT refused the input: {exc}") from exc

    def _get(self, detail: dict[str, Any]) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])
        if _is_quantized(detail) and not self.raw:
            scale, zero_point = detail["quantization"]
            return dequantize_array(out, scale, zero_point)
        return out.copy()  # get_tensor's buffer is reused by the next invoke


def _call_order(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tensors in the model's call order: converters name them ``serving_default_args_1:0`` or
    ``StatefulPartitionedCall:1``, and the interpreter does not list them in that order."""
    def key(detail: dict[str, Any]) -> tuple[int, int]:
        name = str(detail.get("name", ""))
        arg = re.search(r"args_(\d+)", name)
        tail = re.search(r"(\d+)$", name)
        return (int(arg.group(1)) if arg else 0, int(tail.group(1)) if tail and not arg else 0)
    return sorted(details, key=key) if len(details) > 1 else details


def _is_quantized(detail: dict[str, Any]) -> bool:
    scale, _ = detail.get("quantization", (0.0, 0))
    return bool(scale) and np.issubdtype(np.dtype(detail["dtype"]), np.integer)
