"""Old .ecm files still load: fixtures written by main before typed recipes (tests/fixtures)."""

from pathlib import Path

import pytest
import torch

import edgecompress as ec
from edgecompress.models import small_cnn

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_v1_ecm_loads_and_computes_what_it_computed(scheme):
    dm = ec.DeployableModel.load(FIXTURES / f"v1_{scheme}.ecm", builder=lambda: small_cnn(width=4))
    io = torch.load(FIXTURES / f"v1_{scheme}_io.pt", weights_only=True)
    assert dm.quant_recipe is not None and dm.quant_recipe.scheme == scheme
    with torch.no_grad():
        y = dm.model(io["x"])
    assert torch.allclose(y, io["y"], atol=1e-5), float((y - io["y"]).abs().max())


def test_v1_static_ecm_exports_int8_onnx(tmp_path):
    dm = ec.DeployableModel.load(FIXTURES / "v1_static.ecm", builder=lambda: small_cnn(width=4))
    dm.data = ec.data.digits(image_size=8, batch_size=32, seed=0)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0, parity_samples=32)
    assert art.precision == "int8-static"
    assert art.parity.top1_agreement >= 0.9
