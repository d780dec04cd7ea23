"""FP16 ONNX: refused where only the CPU provider would run it, correct where it is written."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from edgecompress.errors import ExportError

FAST = {"benchmark_runs": 0, "parity_samples": 96, "threads": 1}
CPU_ONLY = set(ort.get_available_providers()) <= {"CPUExecutionProvider", "AzureExecutionProvider"}


@pytest.mark.skipif(not CPU_ONLY, reason="a GPU/NPU provider is installed: fp16 is not refused")
def test_fp16_is_refused_with_only_the_cpu_provider(cnn_dm, tmp_path):
    with pytest.raises(ExportError, match="fp16_on_cpu=True"):
        cnn_dm.export("onnx", tmp_path / "m16.onnx", fp16=True)
    assert not (tmp_path / "m16.onnx").exists()


def test_fp16_weights_and_ops_with_fp32_io(cnn_dm, tmp_path):
    fp32 = cnn_dm.export("onnx", tmp_path / "m.onnx", verify=False)
    art = cnn_dm.export("onnx", tmp_path / "m16.onnx", fp16=True, fp16_on_cpu=True, **FAST)
    assert art.precision == "fp16" and art.parity is not None and art.parity.passed, str(art.parity)
    proto = onnx.load(str(tmp_path / "m16.onnx"))
    weights = [t for t in proto.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # callers feed fp32
    assert art.size_bytes < 0.6 * fp32.size_bytes
