"""Calibrate once (#25): the ONNX INT8 export reuses the ranges the simulated model measured.

The scales in the written QDQ graph must be the ones the recipe's ranges give (ORT's uint8
asymmetric rule), and the graph is run at export only for tensors the simulation has no
quantizer for.
"""

from __future__ import annotations

import numpy as np
import torch
import onnx
import pytest
from onnx import numpy_helper

import edgecompress as ec
from edgecompress.pipeline import Measure

FAST = Measure(latency=False, macs=False)


def _uint8_scale(lo: float, hi: float) -> float:
    """ORT's activation scale for a [lo, hi] range in uint8 (the range always holds 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    return (hi - lo) / 255.0


@pytest.fixture(scope="module", params=["minmax", "percentile"])
def exported(request, _cnn_weights, digits, tmp_path_factory):
    import copy

    model = copy.deepcopy(_cnn_weights)  # the session's trained SmallCNN (conftest)
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=128, method=request.param)],
                     measure=FAST).run(model.eval(), digits)
    path = tmp_path_factory.mktemp(request.param) / "m.onnx"
    return dm, dm.export("onnx", path, benchmark_runs=0)


def _input_scales(path) -> dict[str, float]:
    """The scale of the QuantizeLinear feeding each Conv / Gemm (through its DequantizeLinear),
    by the float node's name in the QDQ graph."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    scales = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producers[node.input[0]]
        q = producers[dq.input[0]]
        assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
        scales[node.name] = float(inits[q.input[1]])
    return scales


def test_export_reuses_the_simulated_models_ranges(exported):
    dm, art = exported
    notes = art.notes
    assert art.parity.passed, art.parity
    # every tensor of this CNN has a quantizer in the simulation: nothing is run again
    assert notes["ranges_from_recipe"] >= 2 * 6 - 1, notes
    assert notes["ranges_calibrated_at_export"] == 0, notes
    ranges = dm.quant_recipe.ranges
    want = sorted(_uint8_scale(*ranges[f"{name}:in"]) for name in
                  [k.rpartition(":")[0] for k in ranges if k.endswith(":in")])
    got = sorted(_input_scales(art.path).values())
    assert len(got) == len(want) == 6
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tensors_without_a_quantizer_are_calibrated_at_export(trained_resnet, digits, tmp_path):
    """A residual net's last Add feeds a pool, not a layer: the simulation has no quantizer
    on it, so ORT's graph is run for it (and only for such tensors)."""
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64, method="minmax")],
                     measure=FAST).run(trained_resnet.eval(), digits)
    art = dm.export("onnx", tmp_path / "r.onnx", benchmark_runs=0)
    notes = art.notes
    assert art.parity.passed, art.parity
    assert 0 < notes["ranges_calibrated_at_export"] <= 4, notes
    assert notes["ranges_from_recipe"] > 4 * notes["ranges_calibrated_at_export"], notes


def test_reference_outputs_are_computed_once_per_model_state_and_samples(trained_cnn, digits):
    """Exporting one model to several formats runs the reference once on the same samples; new
    samples or weights changed in place compute them again."""
    from edgecompress.export import verify

    calls = []
    real = verify._reference_outputs
    verify._reference_outputs = lambda m, x: calls.append(1) or real(m, x)
    try:
        x = digits.samples("val", 16)
        first = verify.reference_outputs(trained_cnn, x)
        again = verify.reference_outputs(trained_cnn, x.clone())
        assert len(calls) == 1
        np.testing.assert_array_equal(first["output"], again["output"])
        verify.reference_outputs(trained_cnn, x[:8])
        assert len(calls) == 2
        with torch.no_grad():
            next(trained_cnn.parameters()).mul_(2.0)
        changed = verify.reference_outputs(trained_cnn, x[:8])
        assert len(calls) == 3 and not np.allclose(changed["output"], first["output"][:8])
    finally:
        verify._reference_outputs = real
