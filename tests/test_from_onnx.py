"""ec.from_onnx: ONNX files from other tools become torch modules the whole pipeline takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.convert.onnx_graph import unsupported_ops

pytest.importorskip("onnx2torch", reason="from_onnx needs onnx2torch (pip install 'edgecompress[onnx-in]')")
onnx = pytest.importorskip("onnx")


class ResidualNet(nn.Module):
    """BatchNorm, a residual sum, an asymmetric stride-2 pad, reshapes and a Softmax: what
    exporters from other frameworks write."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.down = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 16, 3, stride=2))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.reshape(-1, 1, 16, 16))  # a constant-shape Reshape
        h = torch.relu(h + self.body(h))
        h = torch.relu(self.down(h)).mean((2, 3))
        return torch.softmax(self.head(h), -1)


def _export(model: nn.Module, path, shape=(1, 1, 16, 16), opset: int = 13):
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(model.eval(), torch.randn(*shape), str(path), opset_version=opset,
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory):
    return _export(ResidualNet(), tmp_path_factory.mktemp("onnx") / "residual.onnx")


def test_conversion_matches_onnx_runtime_and_is_plain_torch(residual_onnx, digits):
    model = ec.from_onnx(residual_onnx, digits.samples("val", 32))
    info = model.edgecompress_source
    assert info["converted_from"] == "onnx" and info["conversion_samples"] == 32
    assert info["conversion_max_abs_diff"] < 1e-5
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "Linear"} <= kinds  # BatchNorm folded into the convolutions
    assert not kinds & {"BatchNorm2d", "OnnxBinaryMathOperation", "OnnxPadStatic", "OnnxReshape"}


def test_pipeline_records_the_conversion_on_the_input_stage(residual_onnx, digits):
    model = ec.from_onnx(residual_onnx, digits.samples("val", 8))
    dm = ec.Pipeline([], measure=False).run(model, digits)
    notes = dm.report.stages[0].notes
    assert notes["converted_from"] == "onnx"
    assert notes["conversion_max_abs_diff"] == model.edgecompress_source["conversion_max_abs_diff"]


def test_prune_and_int8_export_back_to_onnx_with_parity(residual_onnx, digits, tmp_path):
    model = ec.from_onnx(residual_onnx, digits.samples("val", 8), logits=True)
    passes = [ec.passes.StructuredPrune(ratio=0.25, round_to=None), ec.passes.QuantizePTQ(samples=64)]
    dm = ec.Pipeline(passes, measure=False).run(model, digits)
    convs = [m for m in dm.float_model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels for c in convs) < 8 + 8 + 16  # channels physically removed
    art = dm.export("onnx", tmp_path / "m.onnx")
    assert art.precision == "int8-static" and art.parity.passed, art
    types = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "QuantizeLinear" in types and "Conv" in types


class KerasStyleBN(nn.Module):
    """Conv → Mul → Add by per-channel constants: the inference BatchNorm tf2onnx writes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("scale", torch.rand(1, 8, 1, 1, generator=g) + 0.5)
        self.register_buffer("shift", torch.randn(1, 8, 1, 1, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x) * self.scale + self.shift)
        return self.head(torch.relu(self.conv2(h)).mean((2, 3)))


def test_batchnorm_keep_gives_trainable_batchnorm_with_measured_statistics(tmp_path, digits):
    path = _export(KerasStyleBN(), tmp_path / "bn.onnx")
    x = digits.samples("val", 64)
    model = ec.from_onnx(path, x, batchnorm="keep")
    notes = model.edgecompress_source["conversion_notes"]
    assert notes["batchnorms_kept"] == 1 and model.edgecompress_source["conversion_max_abs_diff"] < 1e-5
    (bn,) = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert float(bn.running_var.min()) != pytest.approx(1.0)  # measured, not the placeholder
    with torch.no_grad():
        eval_out = model(x)
        train_out = model.train()(x)  # batch statistics of the same samples: the same function
    assert torch.allclose(eval_out, train_out, atol=1e-4)
    folded = ec.from_onnx(path, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_logits_drops_the_final_softmax_and_measures_after_one(residual_onnx, digits):
    x = digits.samples("val", 8)
    probs = ec.from_onnx(residual_onnx, x)
    logits = ec.from_onnx(residual_onnx, x, logits=True)
    assert logits.edgecompress_source["conversion_notes"]["dropped_final_softmax_axis"] == -1
    with torch.no_grad():
        assert torch.allclose(torch.softmax(logits(x), -1), probs(x), atol=1e-6)
        assert not torch.allclose(logits(x).sum(-1), torch.ones(8))


def test_unconvertible_ops_are_refused_by_name(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Hardmax", ["h"], ["y"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    assert unsupported_ops(proto) == ["Hardmax"]
    with pytest.raises(ec.ConversionError, match="Hardmax"):
        ec.from_onnx(proto)


def test_wrong_number_of_sample_arrays_is_a_clear_error(residual_onnx):
    x = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(ec.ConversionError, match="1 input"):
        ec.from_onnx(residual_onnx, [x, x])


def test_nhwc_model_with_nchw_data_says_which_layout_to_build(tmp_path, digits):
    class NHWC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.permute(0, 3, 1, 2)).mean((2, 3))

    path = _export(NHWC(), tmp_path / "nhwc.onnx", shape=(1, 16, 16, 1))
    model = ec.from_onnx(path, layout="NHWC")
    with pytest.raises(ec.DataError, match="layout='NHWC'"):
        ec.Pipeline([], measure=False).run(model, digits)
    nhwc = ec.data.digits(image_size=16, layout="NHWC")
    dm = ec.Pipeline([], measure=False).run(model, nhwc)
    assert dm.input_spec.layout == "NHWC" and dm.input_spec.shape == (1, 16, 16, 1)


def test_not_an_onnx_file_is_refused(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ec.ConversionError, match="not a readable ONNX file"):
        ec.from_onnx(bad)


def test_a_bare_matmul_by_a_constant_becomes_a_linear_layer_int8_quantizes(tmp_path, digits):
    # a Keras Dense without bias arrives as MatMul(x, W): it must become nn.Linear, the layer
    # PTQ simulates, since ONNX Runtime's quantizer quantizes that MatMul
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = ec.from_onnx(proto, digits.samples("val", 16))
    assert model.edgecompress_source["conversion_notes"]["matmuls_to_gemm"] == 1
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.Linear)] == ["Linear"]
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(model, digits)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    assert art.metrics().parity_ok and art.notes["int8_check"]["int8_weight_tensors"] == 1
