"""UnstructuredPrune on a real trained CNN: measured sparsity, masks gone, zeros compress."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.measure import sparsity
from edgecompress.passes.prune_unstructured import cubic_schedule
from edgecompress.training import accuracy

CHEAP = ec.Measure(accuracy=False, latency=False, macs=False, compressed=True)


def _run(model, data, **options):
    return ec.Pipeline([ec.passes.UnstructuredPrune(**options)], measure=CHEAP).run(model, data)


def _no_masks(model):
    names = [n for m in model.modules() for n in ("weight_orig", "weight_mask") if hasattr(m, n)]
    keys = [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]
    return not names and not keys and not any(m._forward_pre_hooks for m in model.modules())


def test_global_80_percent_is_measured_and_masks_are_gone(trained_cnn, digits):
    dm = _run(trained_cnn, digits, sparsity=0.8)
    assert abs(sparsity(dm.model) - 0.8) <= 0.01
    assert abs(dm.report.stages[-1].notes["sparsity_measured"] - 0.8) <= 0.01
    assert _no_masks(dm.model)
    assert all(isinstance(m.weight, nn.Parameter) for m in dm.model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sparsity(trained_cnn) < 0.01  # the input model is untouched
    stages = dm.report.stages
    assert stages[-1].compressed_bytes["xz"] < 0.5 * stages[0].compressed_bytes["xz"]


def test_layer_scope_prunes_every_layer_equally(trained_cnn, digits):
    dm = _run(trained_cnn, digits, sparsity=0.6, scope="layer")
    for m in dm.model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert abs(float((m.weight == 0).float().mean()) - 0.6) <= 0.01


def test_cubic_schedule_rises_to_the_target():
    s = cubic_schedule(0.8, 4)
    assert s == sorted(s) and s[-1] == pytest.approx(0.8)
    assert s[0] > 0.8 / 4  # cubic: most of the pruning happens early


def test_gradual_finetune_keeps_masks_and_recovers(trained_cnn, digits):
    cut = _run(trained_cnn, digits, sparsity=0.95)
    dm = _run(trained_cnn, digits, sparsity=0.95, schedule="gradual", steps=3,
              finetune=ec.FineTune(epochs=2, lr=3e-3))
    notes = dm.report.stages[-1].notes
    steps = [notes[f"sparsity_step{i}"] for i in (1, 2, 3)]
    assert steps == sorted(steps) and abs(steps[-1] - 0.95) <= 0.01
    # fine-tuning ran with the masks on: the zeros survived training
    assert abs(sparsity(dm.model) - 0.95) <= 0.01 and _no_masks(dm.model)
    assert accuracy(dm.model, digits.val) > accuracy(cut.model, digits.val) + 0.05


def test_onnx_xz_size_drops_at_80_percent(trained_cnn, digits, tmp_path):
    pipe = ec.Pipeline([ec.passes.UnstructuredPrune(sparsity=0.8)], measure=False)
    dm = pipe.run(trained_cnn, digits)
    dense_dm = ec.DeployableModel(model=trained_cnn, input_spec=dm.input_spec, data=digits)
    opts = {"benchmark_runs": 0, "compressed": True}
    sparse_art = dm.export("onnx", tmp_path / "sparse.onnx", **opts)
    dense_art = dense_dm.export("onnx", tmp_path / "dense.onnx", **opts)
    assert sparse_art.parity.passed
    ratio = sparse_art.compressed_bytes["xz"] / dense_art.compressed_bytes["xz"]
    assert ratio <= 0.35, ratio
    assert abs(sparse_art.size_bytes - dense_art.size_bytes) < 0.05 * dense_art.size_bytes


def test_ignore_leaves_layers_dense(trained_cnn, digits):
    dm = _run(trained_cnn, digits, sparsity=0.8, ignore=("classifier",))
    assert float((dm.model.classifier.weight == 0).float().mean()) == 0.0


def test_recipe_round_trip():
    p = ec.passes.UnstructuredPrune(sparsity=0.8, scope="global", schedule="gradual", steps=4,
                                    finetune=ec.FineTune(epochs=1))
    recipe = json.loads(json.dumps(ec.Pipeline([p]).to_recipe()))
    back = ec.Pipeline.from_recipe(recipe).passes[0]
    assert back == p and back.finetune.epochs == 1


@pytest.mark.parametrize("options", [{"sparsity": 0}, {"sparsity": 1}, {"sparsity": 1.2},
                                     {"scope": "local"}, {"schedule": "linear"}, {"steps": 0}])
def test_bad_options(options):
    with pytest.raises(ec.ConfigError):
        ec.passes.UnstructuredPrune(**options)


def test_model_without_weights_fails_cleanly(digits):
    model = nn.Sequential(nn.AdaptiveAvgPool2d((10, 1)), nn.Flatten())
    with pytest.raises(ec.PassError, match="no Conv or Linear"):
        _run(model, digits)


def test_finetune_without_train_data_fails_before_work(trained_cnn, digits):
    data = ec.DataBundle(val=digits.val, num_classes=10)
    state = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    with pytest.raises(ec.DataError, match="data.train"):
        _run(trained_cnn, data, finetune=ec.FineTune(epochs=1))
    assert all(torch.equal(v, trained_cnn.state_dict()[k]) for k, v in state.items())
