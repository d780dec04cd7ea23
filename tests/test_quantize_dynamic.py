"""Dynamic INT8 on a TransformerEncoder classifier and an LSTM: torch and ONNX artifacts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

import edgecompress as ec
from edgecompress.deployable import DeployableModel
from edgecompress.errors import ConfigError
from edgecompress.pipeline import Measure
from edgecompress.training import TrainConfig, cross_entropy_loss, train


class RowTransformer(nn.Module):
    """Reads a 16×16 digit as 16 tokens of 16 pixels."""

    def __init__(self, d_model: int = 128, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(16, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.flatten(1, 2))).mean(1))


class RowLSTM(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(x.flatten(1, 2))
        return self.head(out[:, -1])


def _trained(model, digits, epochs=2):
    torch.manual_seed(0)
    train(model, digits.train, cross_entropy_loss, TrainConfig(epochs=epochs, lr=3e-3))
    return model.eval()


@pytest.fixture()
def no_mha_fast_path():
    """torch's TorchScript ONNX exporter cannot trace the fused eval-mode encoder kernel
    (aten::_transformer_encoder_layer_fwd); the regular path exports."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(was)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    num = (a * b).sum(1)
    return float((num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.mark.parametrize("builder,int_op", [(RowTransformer, "MatMulInteger"),
                                            (RowLSTM, "DynamicQuantizeLSTM")])
def test_dynamic_int8_onnx_is_smaller_and_close(builder, int_op, digits, tmp_path,
                                                no_mha_fast_path):
    torch.manual_seed(0)
    model = _trained(builder(), digits, epochs=1)
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=Measure(latency=False, macs=False)
                     ).run(model, digits)
    assert dm.quant_recipe.scheme == "dynamic"
    float_dm = ec.Pipeline([], measure=False).run(model, digits)
    float_art = float_dm.export("onnx", tmp_path / "f32.onnx", benchmark_runs=0)
    art = dm.export("onnx", tmp_path / "dyn.onnx", benchmark_runs=0)
    assert art.precision == "int8-dynamic" and art.parity.passed, art.parity
    assert float_art.size_bytes / art.size_bytes >= 3.0, (float_art.size_bytes, art.size_bytes)
    proto = onnx.load(str(art.path))
    assert any(n.op_type == int_op for n in proto.graph.node)
    assert sum(t.data_type == TensorProto.INT8 for t in proto.graph.initializer) >= 2
    x = digits.samples("val", 128)
    with torch.no_grad():
        ref = model(x).numpy()
        sim = dm.model(x).numpy()
    runner = art.load()
    out = runner(x.numpy())
    runner.close()
    assert _cosine(ref, out) >= 0.99 and _cosine(ref, sim) >= 0.99
    stages = dm.report.stages
    # packed int8 weights in torch too (torch leaves nn.MultiheadAttention's projections float)
    assert stages[-1].size_bytes < 0.6 * stages[0].size_bytes


def test_dynamic_save_load_and_bad_options(digits, tmp_path):
    model = _trained(RowLSTM(hidden=32), digits, epochs=1)
    dm = ec.Pipeline([ec.passes.QuantizeDynamic(skip=["head"])], measure=False).run(model, digits)
    assert isinstance(dm.model.head, nn.Linear)  # kept float
    path = dm.save(tmp_path / "dyn.ecm", portable=False)
    loaded = DeployableModel.load(path, builder=lambda: RowLSTM(hidden=32))
    x = digits.samples("val", 16)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), dm.model(x))
    assert loaded.quant_recipe.layers == ("Linear", "LSTM", "GRU")
    with pytest.raises(ConfigError, match="Conv"):
        ec.passes.QuantizeDynamic(layers=("Conv",))
    with pytest.raises(ConfigError, match="not a layer"):
        ec.Pipeline([ec.passes.QuantizeDynamic(skip=["decoder"])], measure=False).run(model, digits)
