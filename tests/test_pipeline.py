"""Pipeline: chain checks before work, measured stages, failures that keep earlier results."""

from dataclasses import dataclass

import onnx
import pytest
import torch

import edgecompress as ec
from edgecompress.forms import Form
from edgecompress.options import option


@dataclass
class NeedsOnnx(ec.Pass):
    name = "needs_onnx"
    accepts = (Form.ONNX_GRAPH,)

    def run(self, model, ctx):
        raise AssertionError("must never run")


@dataclass
class Boom(ec.Pass):
    name = "boom"
    at: int = option(0, "unused")

    def run(self, model, ctx):
        with torch.no_grad():  # change the model, then fail: the pipeline must roll back
            for p in model.parameters():
                p.zero_()
        raise RuntimeError("kaput")


@dataclass
class Halve(ec.Pass):
    name = "halve"

    def run(self, model, ctx):
        with torch.no_grad():
            model.classifier.weight.mul_(0.5)
        ctx.note("halved", True)
        return model


def test_impossible_chain_fails_before_any_pass_runs(trained_cnn, digits):
    ran = []

    @dataclass
    class Spy(ec.Pass):
        name = "spy"

        def run(self, model, ctx):
            ran.append(1)
            return model

    pipe = ec.Pipeline([Spy(), NeedsOnnx()])
    with pytest.raises(ec.ChainError) as err:
        pipe.run(trained_cnn, digits)
    assert "pass 2 'needs_onnx'" in str(err.value) and "torch-float" in str(err.value)
    assert ran == []


def test_report_measures_every_stage(trained_cnn, digits):
    dm = ec.Pipeline([ec.passes.Fuse(), Halve()]).run(trained_cnn, digits)
    stages = dm.report.stages
    assert [s.stage for s in stages] == ["input", "fuse", "halve"]
    inp, fuse = stages[0], stages[1]
    assert inp.params == sum(p.numel() for p in trained_cnn.parameters())
    assert fuse.params < inp.params  # BatchNorm parameters folded away
    assert inp.macs > 0 and fuse.macs == inp.macs
    assert inp.accuracy > 0.9 and abs(fuse.accuracy - inp.accuracy) < 1e-9
    assert inp.latency_ms > 0
    assert stages[2].notes == {"halved": True}
    d = dm.report.to_dict()
    assert d["stages"][1]["stage"] == "fuse"
    assert "| input |" in dm.report.to_markdown()
    assert "fuse" in str(dm.report)


def test_input_model_is_left_untouched(trained_cnn, digits):
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    ec.Pipeline([ec.passes.Fuse(), Halve()]).run(trained_cnn, digits)
    after = trained_cnn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_pipeline_twice_on_one_bundle_gives_the_same_model(trained_cnn, digits):
    # the shuffling loader's generator advances with every epoch; a run must not see the
    # batches its predecessor left behind
    pipe = ec.Pipeline([ec.passes.UnstructuredPrune(sparsity=0.5, finetune=ec.FineTune(epochs=1))],
                       measure=False, seed=0)
    first, second = (pipe.run(trained_cnn, digits).model for _ in range(2))
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_failed_pass_keeps_earlier_stages(trained_cnn, digits):
    pipe = ec.Pipeline([ec.passes.Fuse(), Boom()], measure=False)
    with pytest.raises(ec.PassError, match="pass 2 'boom' failed: RuntimeError: kaput") as err:
        pipe.run(trained_cnn, digits)
    partial = err.value.partial
    assert [s.stage for s in partial.report.stages] == ["input", "fuse", "boom"]
    assert partial.report.stages[-1].error.startswith("RuntimeError")
    # the model is the fused one, not the half-zeroed one the failing pass left behind
    assert any(float(p.abs().sum()) > 0 for p in partial.model.parameters())
    stopped = pipe.run(trained_cnn, digits, on_error="stop")
    assert stopped.report.stages[-1].error and len(stopped.history) == 1


def test_fuse_matches_unfused_outputs(trained_resnet, digits):
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(trained_resnet, digits)
    x = digits.samples("val", 64)
    with torch.no_grad():
        diff = (dm.model(x) - trained_resnet(x)).abs().max().item()
    assert diff <= 1e-5
    bns = [m for m in dm.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns == []
    assert dm.report.stages[1].notes["fused_pairs"] == 9 and "notes" not in dm.history[0]


def test_fuse_on_untraceable_model_fuses_sequential_pairs_and_warns(digits, caplog):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
            self.head = torch.nn.Linear(4, 10)

        def forward(self, x):
            y = self.body(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                y = y * 1.0
            return self.head(y.mean((2, 3)))

    m = Branchy().eval()
    with caplog.at_level("WARNING", logger="edgecompress"):
        dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(m, digits)
    assert "cannot trace" in caplog.text
    assert isinstance(dm.model.body[1], torch.nn.Identity)


def test_pipeline_rejects_non_passes_and_non_bundles(trained_cnn, digits):
    with pytest.raises(ec.ConfigError, match="Pass objects"):
        ec.Pipeline(["fuse"])
    with pytest.raises(ec.ConfigError, match="DataBundle"):
        ec.Pipeline([ec.passes.Fuse()]).run(trained_cnn, [torch.zeros(1)])


def test_recipe_round_trip(tmp_path):
    pipe = ec.Pipeline([ec.passes.Fuse(tolerance=1e-3)], seed=3)
    for suffix in (".json", ".yaml"):
        path = pipe.save_recipe(tmp_path / f"r{suffix}")
        assert ec.Pipeline.from_recipe(path) == pipe


@pytest.mark.parametrize("recipe, words", [
    ({"passes": [{"pass": "nope"}]}, "unknown pass 'nope'. Known passes:"),
    ({"passes": [{"pass": "fuse", "tolerence": 1}]}, "unknown option 'tolerence'. Allowed options: tolerance"),
    ({"passes": [{"pass": "fuse", "tolerance": "x"}]}, "option 'tolerance' is invalid: expected float"),
    ({"passes": []}, "non-empty list"),
    ({"passes": [{"pass": "fuse"}], "extra": 1}, "unknown key(s) extra"),
])
def test_bad_recipes_fail_naming_the_problem(recipe, words):
    with pytest.raises(ec.ConfigError) as err:
        ec.Pipeline.from_recipe(recipe)
    assert words in str(err.value)


def test_onnx_graph_chain_runs_from_an_onnx_model(digits, trained_cnn, tmp_path):
    @dataclass
    class Identity(ec.Pass):
        name = "onnx_identity"
        accepts = (Form.ONNX_GRAPH,)

        def run(self, model, ctx):
            return model

    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(trained_cnn, digits)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    proto = onnx.load(str(art.path))
    pipe = ec.Pipeline([Identity()], measure=ec.Measure(latency=False, macs=False))
    assert pipe.check(Form.ONNX_GRAPH) == [Form.ONNX_GRAPH, Form.ONNX_GRAPH]
    out = pipe.run(proto, digits)
    from edgecompress.training import accuracy

    assert out.report.stages[0].accuracy == pytest.approx(accuracy(dm.model, digits.val))
    assert out.report.stages[0].size_bytes == len(proto.SerializeToString())


def test_training_after_batchnorm_folding_is_warned_about(trained_cnn, digits, caplog):
    quick = ec.FineTune(epochs=1, max_batches=1)
    folded_first = ec.Pipeline([ec.passes.Fuse(), ec.passes.UnstructuredPrune(
        sparsity=0.5, finetune=quick)], measure=False)
    with caplog.at_level("WARNING", logger="edgecompress"):
        folded_first.run(trained_cnn, digits)
    assert "folded BatchNorm" in caplog.text and "unstructured_prune" in caplog.text
    caplog.clear()
    fold_last = ec.Pipeline([ec.passes.UnstructuredPrune(sparsity=0.5, finetune=quick),
                             ec.passes.Fuse()], measure=False)
    with caplog.at_level("WARNING", logger="edgecompress"):
        fold_last.run(trained_cnn, digits)
    assert "folded BatchNorm" not in caplog.text
