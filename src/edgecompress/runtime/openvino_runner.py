"""OpenVINO runner: an IR folder (``model.xml`` + ``model.bin``) or a bare ``.xml`` on the CPU plugin.

FP32 and INT8 artifacts are compiled with ``INFERENCE_PRECISION_HINT=f32`` so the float parts
stay fp32 (the CPU plugin would otherwise pick bf16 on CPUs with AMX/AVX-512-BF16, and parity
would measure bf16 rounding, not the artifact); fp16 artifacts ask for f16 where the CPU has
fp16 arithmetic and otherwise run their fp16 weights decompressed to fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ArtifactError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec

RT_INFO_KEY = "edgecompress"  # the rt_info entry of model.xml that holds the metadata (JSON)
# compiled-graph layer types that do the arithmetic: the ones whose precision says whether
# int8 kernels run (Reorder/Reshape/Pooling in u8 only move int8 data around)
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")
_OV_TYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64",
             "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool"}


def find_xml(path: Path, metadata: dict[str, Any]) -> Path:
    """The ``.xml`` of an IR folder (or the file itself), with its ``.bin`` present."""
    if path.is_dir():
        if metadata.get("openvino_xml"):
            xml = path / metadata["openvino_xml"]
        else:
            found = sorted(path.glob("*.xml"))
            if len(found) != 1:
                raise ArtifactError(f"{path} holds {len(found)} .xml files "
                                    f"({', '.join(p.name for p in found) or 'none'}); an "
                                    f"OpenVINO artifact folder holds exactly one")
            xml = found[0]
    else:
        xml = path
    if not xml.exists():
        raise ArtifactError(f"{path}: graph file {xml.name} is missing")
    if not xml.with_suffix(".bin").exists():
        raise ArtifactError(f"{path}: found the graph {xml.name} but not its weights "
                            f"{xml.with_suffix('.bin').name}; OpenVINO needs both files")
    return xml


def _shape(partial: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in partial)


class OpenVinoRunner(Runner):
    """Runs OpenVINO IR with the ``openvino`` package's CPU plugin.

    Options: ``threads`` (``INFERENCE_NUM_THREADS``; None: OpenVINO's default), ``device``
    (default ``"CPU"``), ``precision_hint`` (None: f32 for fp32/int8 artifacts, f16 for fp16
    ones where the CPU supports it).
    """

    format = "openvino"

    def _load(self) -> None:
        ov = require("openvino", "openvino", "Running an OpenVINO model")
        self.metadata = read_sidecar(self.path) if self.path.is_dir() else {}
        self.xml = find_xml(self.path, self.metadata)
        core = ov.Core()
        try:
            model = core.read_model(str(self.xml))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own error types
            raise ArtifactError(f"OpenVINO cannot read {self.xml}: {str(exc)[:400]}") from exc
        if not self.metadata:
            self.metadata = _rt_metadata(model)
        device = self.options.get("device", "CPU")
        config = self._config(core, device)
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"OpenVINO cannot compile {self.xml} for {device}: "
                                f"{str(exc)[:400]}") from exc
        self.request = self.compiled.create_infer_request()
        self.inputs = [TensorSpec(p.get_any_name(), _shape(p.get_partial_shape()),
                                  _OV_TYPES.get(p.get_element_type().get_type_name(), "float32"))
                       for p in self.compiled.inputs]
        self.outputs = [TensorSpec(p.get_any_name(), _shape(p.get_partial_shape()),
                                   _OV_TYPES.get(p.get_element_type().get_type_name(), "float32"))
                        for p in self.compiled.outputs]

    def _config(self, core: Any, device: str) -> dict[str, Any]:
        hint = self.options.get("precision_hint")
        if hint is None:
            caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES") if device == "CPU" else []
            want_f16 = self.metadata.get("precision") == "fp16" and "FP16" in caps
            hint = "f16" if want_f16 else "f32"
        self.precision_hint = hint
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
            config["NUM_STREAMS"] = 1
        return config

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.request.infer(dict(enumerate(feeds.values())), share_inputs=True)
        return {spec.name: np.array(self.request.get_output_tensor(i).data, copy=True)
                for i, spec in enumerate(self.outputs)}

    def runtime_precisions(self) -> dict[str, int]:
        """``{"<layer type>:<precision>": count}`` of the compute layers OpenVINO compiled."""
        return compute_precisions(self.compiled)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "xml": self.xml.name, "precision_hint": self.precision_hint,
                "compiled_layers": self.runtime_precisions()}

    def close(self) -> None:
        self.request = None
        self.compiled = None


def compute_precisions(compiled: Any) -> dict[str, int]:
    """``{"<layer type>:<runtime precision>": count}`` of a compiled model's compute layers.

    Read from ``get_runtime_model()``: the graph the plugin really executes, after its
    low-precision transformations, so ``Convolution:u8`` means an int8 kernel ran.
    """
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in COMPUTE_LAYERS:
            key = f"{kind}:{info['runtimePrecision'].astype(str)}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def int8_layer_count(precisions: dict[str, int]) -> int:
    """How many compute layers of :func:`compute_precisions` run in int8/u8."""
    return sum(n for key, n in precisions.items() if key.rsplit(":", 1)[1] in ("i8", "u8"))


def _rt_metadata(model: Any) -> dict[str, Any]:
    """The edgecompress metadata embedded in an IR's rt_info ({} for IR written elsewhere)."""
    if not model.has_rt_info(RT_INFO_KEY):
        return {}
    try:
        return json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
    except (ValueError, TypeError):
        return {}
