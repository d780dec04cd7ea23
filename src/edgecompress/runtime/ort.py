"""ONNX Runtime runner."""

from __future__ import annotations


import numpy as np

from ..errors import ArtifactError
from ..onnx_utils import load_onnx, read_metadata, verify_weights
from . import _unverified
from .base import Runner, TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OrtRunner(Runner):
    """Runs ``.onnx`` files with ONNX Runtime.

    Options: ``threads`` (intra-op threads; None lets ORT choose), ``providers`` (default
    ``["CPUExecutionProvider"]``), ``verify`` (the recorded weights sha256: None checks it when present, True also
    refuses a file without one, False skips it), ``spinning`` (False: idle intra-op threads sleep
    instead of spinning, so a runtime timed alternately with this one gets the cores; default
    ORT's own).
    """

    format = "onnx"
    thread_safe = True  # InferenceSession.run may be called from several threads at once

    def _load(self) -> None:
        import onnxruntime as ort

        model = load_onnx(self.path)
        given = bool(self.metadata)  # an exporter verifying a fresh file passes it in memory
        self.metadata = read_metadata(model) or self.metadata
        verify = self.options.get("verify")
        recorded = bool(self.metadata.get("weights_sha256"))
        self.verified = recorded and verify is not False
        if verify is not False:
            if not recorded and not given:
                _unverified(self.path, verify)
            verify_weights(model, self.metadata, self.path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
            opts.inter_op_num_threads = 1
        if self.options.get("spinning") is False:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                                providers=list(providers))
        except Exception as exc:  # ORT raises its own exception types
            raise ArtifactError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        self.inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                                  _ORT_TYPES.get(i.type, "float32"))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(d if isinstance(d, int) else None for d in o.shape),
                                   _ORT_TYPES.get(o.type, "float32"))
                        for o in self.session.get_outputs()]
        self._input_name = self.inputs[0].name
        self._output_name = self.outputs[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._session_run([self._output_name], {self._input_name: x})[0]

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session_run(names, feeds)))

    def _session_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(names, feeds)
        except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise ArtifactError(f"ONNX Runtime failed running {self.path} on inputs {shapes}: "
                                f"{str(exc).strip()[:600]}") from exc
