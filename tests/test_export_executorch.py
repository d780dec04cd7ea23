"""ExecuTorch export end to end on the trained digits CNN: .pte with XNNPACK → runtime → parity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.errors import ArtifactError, ExportError

pytest.importorskip("executorch", reason="executorch is not installed (pip install 'edgecompress[executorch]')")

FAST = {"benchmark_runs": 0, "parity_samples": 96, "threads": 1}


@pytest.fixture(scope="module")
def int8_dm(_cnn_weights, digits) -> ec.DeployableModel:
    return ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)


@pytest.fixture(scope="module")
def fp32_pte(cnn_dm, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "cnn.pte"
    return path, cnn_dm.export("executorch", path, **FAST)


@pytest.fixture(scope="module")
def int8_pte(int8_dm, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "cnn_int8.pte"
    return path, int8_dm.export("executorch", path, **FAST)


def test_fp32_is_fully_delegated_and_matches_torch(fp32_pte, cnn_dm, digits):
    path, art = fp32_pte
    assert art.precision == "fp32" and art.parity is not None and art.parity.passed, str(art.parity)
    assert art.accuracy is not None and art.accuracy > 0.85
    # every op runs inside one XNNPACK subgraph: nothing falls back to the portable kernels
    assert art.notes["xnnpack_subgraphs"] == 1 and art.notes["portable_ops"] == {}
    assert art.notes["delegated_ops"]["convolution"] == 5
    x = digits.samples("val", 32)
    with ec.load(path, threads=1) as runner:
        assert type(runner).__name__ == "ExecuTorchRunner"
        assert runner.inputs[0].shape == (1, 1, 16, 16)  # fixed batch 1; the runner loops
        out = runner(x.numpy())
    with torch.no_grad():
        ref = cnn_dm.model.eval()(x).numpy()
    assert float(np.abs(out - ref).max()) < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_int8_runs_int8_layers_in_xnnpack(int8_pte, fp32_pte, int8_dm, digits):
    path, art = int8_pte
    assert art.precision == "int8-static" and art.parity is not None and art.parity.passed, str(art.parity)
    # the 5 convolutions and the Linear all take int8 weights inside the delegate
    assert art.notes["int8_delegated_layers"] == 6
    assert art.notes["portable_ops"] == {}
    assert path.stat().st_size < 0.5 * fp32_pte[0].stat().st_size  # int8 weights in the file
    x = digits.samples("val", 64)
    with ec.load(path, threads=1) as runner:
        out = runner(x.numpy())
    with torch.no_grad():
        sim = int8_dm.model.eval()(x).numpy()
    assert (out.argmax(1) == sim.argmax(1)).mean() >= 0.98
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["precision"] == "int8-static" and meta["parity"]["passed"] is True


def test_altered_program_is_refused(fp32_pte, tmp_path):
    path, _ = fp32_pte
    copy_path = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy_path.write_bytes(bytes(data))
    (tmp_path / (path.name + ".json")).write_bytes(path.with_name(path.name + ".json").read_bytes())
    with pytest.raises(ArtifactError, match="sha256"):
        ec.load(copy_path)


def test_refuses_qat_ranges_and_dynamic_recipes(int8_dm, _cnn_weights, digits, tmp_path):
    qat = copy.copy(int8_dm)
    qat.quant_recipe = int8_dm.quant_recipe.replace(ranges_kind="learned")
    with pytest.raises(ExportError, match="learned"):
        qat.export("executorch", tmp_path / "qat.pte")
    dyn = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)
    with pytest.raises(ExportError, match="dynamic.*Formats that can"):
        dyn.export("executorch", tmp_path / "dyn.pte")
    assert not (tmp_path / "qat.pte").exists() and not (tmp_path / "dyn.pte").exists()
