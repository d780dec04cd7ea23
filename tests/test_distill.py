"""Distill pass, KD loss, feature hints, distillation recovery — on real digits, real training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgecompress as ec
from edgecompress.data.bundle import same_batches
from edgecompress.errors import ConfigError, DataError, PassError
from edgecompress.losses import DistillLoss, kd_loss
from edgecompress.models import small_cnn
from edgecompress.options import option
from edgecompress.passes.distill import DistillRecovery
from edgecompress.training import (
    FineTune,
    Recovery,
    TrainConfig,
    accuracy,
    cross_entropy_loss,
    train,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _student(width: int = 8, num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return small_cnn(width=width, num_classes=num_classes)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the loss ---------------------------------------------------------------------------------

def test_kd_loss_equals_the_hand_computed_value():
    s = [[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]]
    t = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    labels, T, alpha = [1, 0], 2.0, 0.25

    def softmax(row, temp=1.0):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(r)[y]) for r, y in zip(s, labels)) / 2
    kl = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(tr, T), softmax(sr, T)))
             for sr, tr in zip(s, t)) / 2
    expected = alpha * ce + (1 - alpha) * T * T * kl
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), T, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.3682, abs=2e-4)  # worked out on paper: 0.1265 + 0.2419


def test_alpha_one_is_plain_cross_entropy(trained_resnet, digits):
    logits, labels = torch.randn(5, 10), torch.tensor([0, 3, 9, 1, 1])
    assert torch.equal(kd_loss(logits, torch.randn(5, 10), labels, 4.0, 1.0),
                       F.cross_entropy(logits, labels))
    cfg = TrainConfig(epochs=1, max_batches=4, lr=3e-3, best_on_val=False)
    a, b = _student(), _student()
    with same_batches(digits.train):
        train(a, digits.train, cross_entropy_loss, cfg, seed=3)
    train(b, digits.train, DistillLoss(trained_resnet, 4.0, 1.0), cfg, seed=3)
    assert _same(_state(a), _state(b))


def test_alpha_below_one_uses_the_teacher(trained_resnet, digits):
    x, y = next(iter(digits.val))
    student = _student().eval()
    with torch.no_grad():
        kd = DistillLoss(trained_resnet, 4.0, 0.5)(student, x, y)
        ce = F.cross_entropy(student(x), y)
    assert abs(float(kd) - float(ce)) > 1e-3


# -- the pass ---------------------------------------------------------------------------------

def test_distilled_student_learns_teacher_unchanged_and_report_filled(trained_resnet, digits):
    teacher = trained_resnet.train()  # left in train mode on purpose: BN stats must not move
    before = _state(teacher)
    step = ec.passes.Distill(teacher=teacher, student=_student(), epochs=3, lr=3e-3,
                             baseline=True)
    dm = ec.Pipeline([step], measure=ec.Measure(latency=False)).run(teacher, digits)
    assert _same(before, _state(teacher))
    assert teacher.training  # its mode is given back
    stage = dm.report.stages[-1]
    assert stage.accuracy > 0.6  # chance is 0.1
    assert stage.params == sum(p.numel() for p in _student().parameters())
    notes = stage.notes
    assert notes["teacher"]["params"] == dm.report.stages[0].params
    assert notes["student"]["params"] * 2 < notes["teacher"]["params"]
    assert notes["student"]["accuracy"] == pytest.approx(stage.accuracy)
    assert notes["teacher"]["latency_ms"] > 0 and notes["student"]["macs"] > 0
    assert 0.3 < notes["baseline_accuracy"] <= 1.0
    assert len(notes["distill_history"]) == 3 == len(notes["baseline_history"])
    assert not any(m._forward_hooks for m in dm.model.modules())


def test_model_in_hand_is_the_student_when_only_a_teacher_is_given(trained_resnet, digits):
    student = _student(width=4)
    step = ec.passes.Distill(teacher=trained_resnet, epochs=1, max_batches=5, measure=False)
    dm = ec.Pipeline([step], measure=False).run(student, digits)
    assert sum(p.numel() for p in dm.model.parameters()) == sum(p.numel() for p in student.parameters())
    assert not _same(_state(student), _state(dm.model))  # trained (on the pipeline's copy)


def test_resume_from_checkpoint_gives_the_uninterrupted_result(trained_resnet, digits, tmp_path):
    x, y = digits.train.dataset.tensors
    base = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64)  # fixed order: comparable

    class Interrupted(Exception):
        pass

    class StopsAtEpoch2:
        def __init__(self):
            self.calls = 0

        def __len__(self):
            return len(base)

        def __iter__(self):
            self.calls += 1
            if self.calls == 2:
                raise Interrupted("power cut")
            return iter(base)

    def step(path):
        return ec.passes.Distill(student=_student(), epochs=2, lr=3e-3, checkpoint=str(path),
                                 hints={"features.3": "layers.1"}, measure=False)

    full = ec.Pipeline([step(tmp_path / "a.pt")], measure=False).run(
        trained_resnet, ec.DataBundle(train=base, val=digits.val, num_classes=10))
    flaky = ec.DataBundle(train=StopsAtEpoch2(), val=digits.val, num_classes=10)
    flaky.train.calls = 0
    with pytest.raises(PassError, match="power cut"):
        ec.Pipeline([step(tmp_path / "b.pt")], measure=False).run(trained_resnet, flaky)
    assert (tmp_path / "b.pt").exists()
    resumed = ec.Pipeline([step(tmp_path / "b.pt")], measure=False).run(
        trained_resnet, ec.DataBundle(train=base, val=digits.val, num_classes=10))
    assert _same(_state(full.model), _state(resumed.model))


def test_feature_hints_add_a_loss_and_train_adapters(trained_resnet, digits):
    student = _student(width=4)  # features.3 gives 8 channels, the teacher's layers.1 16
    x, y = next(iter(digits.train))
    plain = DistillLoss(trained_resnet, 4.0, 0.7)
    hinted = ec.passes.Distill(student=student, hints={"features.3": "layers.1"}, epochs=1,
                               max_batches=6, lr=3e-3, measure=False)
    dm = ec.Pipeline([hinted], measure=False).run(trained_resnet, digits)
    notes = dm.report.stages[-1].notes
    assert notes["distill_adapters"] == {"features.3": "Conv2d(8→16, 1×1)"}
    from edgecompress.passes.distill import _with_adapters
    wrapped = _with_adapters(student, trained_resnet, {"features.3": "layers.1"}, x)
    with_hints = DistillLoss(trained_resnet, 4.0, 0.7, {"features.3": "layers.1"}, 1.0, student)
    with torch.no_grad():
        a = float(plain(wrapped.eval(), x, y))
        b = float(with_hints(wrapped, x, y))
    with_hints.close()
    assert b > a + 1e-4 and with_hints.last_parts["features"] > 0
    assert not any(m._forward_hooks for m in dm.model.modules())


def test_unknown_hint_layer_names_the_layers_it_has(trained_resnet, digits):
    step = ec.passes.Distill(student=_student(), hints={"features.99": "layers.1"}, epochs=1)
    with pytest.raises(ConfigError, match="the student has no layer named 'features.99'"):
        ec.Pipeline([step], measure=False).run(trained_resnet, digits)


# -- recovery ---------------------------------------------------------------------------------

@dataclass
class Perturb(ec.Pass):
    """Test pass: damage the weights with seeded noise, then call the recovery hook."""

    name = "perturb"
    scale: float = option(0.6, "Noise std relative to each weight's std.", low=0)
    finetune: Any = option(None, "Recovery hook.", recipe=False)

    def run(self, model: nn.Module, ctx: ec.PassContext) -> nn.Module:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(torch.randn(p.shape, generator=gen) * p.std() * self.scale)
        ctx.note("damaged_accuracy", accuracy(model, ctx.data.val))
        if self.finetune is not None:
            model = self.finetune.recover(model, ctx, "recover")
        return model


def test_distillation_recovery_inside_a_pipeline(trained_cnn, digits):
    rec = ec.Distill.recover(epochs=2, max_batches=12, lr=2e-3, temperature=3.0, alpha=0.5)
    assert isinstance(rec, DistillRecovery) and isinstance(rec, Recovery)
    dm = ec.Pipeline([Perturb(finetune=rec)], measure=ec.Measure(latency=False)).run(
        trained_cnn, digits)
    stage = dm.report.stages[-1]
    damaged = stage.notes["damaged_accuracy"]
    assert damaged < dm.report.stages[0].accuracy - 0.1  # the damage is real
    assert stage.accuracy > damaged + 0.1
    assert len(stage.notes["recover_history"]) == 2


def test_recovery_needs_the_model_before_and_training_data(trained_cnn, digits):
    rec = ec.Distill.recover(epochs=1)
    ctx = ec.PassContext(data=digits)
    with pytest.raises(ConfigError, match="model that entered the pass"):
        rec.recover(trained_cnn, ctx)
    no_train = ec.DataBundle(val=digits.val, num_classes=10)
    with pytest.raises(DataError, match="DataBundle.train"):
        rec.check_data(no_train)


def test_pipeline_checks_a_recovery_before_its_pass_runs(trained_cnn, digits):
    """Perturb has no check_data of its own: without the pipeline's check of its finetune= the
    weights would be damaged first and the missing data found only inside the recovery."""
    ran = []
    no_train = ec.DataBundle(val=digits.val, num_classes=10)
    step = Perturb(finetune=ec.Distill.recover(epochs=1))
    step.run = lambda model, ctx: ran.append(model)  # type: ignore[method-assign]
    with pytest.raises(DataError, match="distillation recovery trains on DataBundle.train"):
        ec.Pipeline([step], measure=False).run(trained_cnn, no_train)
    assert not ran


# -- recipes ----------------------------------------------------------------------------------

def test_recipe_round_trip():
    rec = ec.Distill.recover(epochs=3, temperature=2.0, alpha=0.4, hints={"a": "b"})
    data = rec.to_recipe()
    assert data["kind"] == "distill"
    assert Recovery.from_recipe(data) == rec
    assert Recovery.from_recipe({"kind": "finetune", "epochs": 2}) == FineTune(epochs=2)
    pipe = ec.Pipeline([ec.passes.Distill(student="mobilenet_v3_small", epochs=4, alpha=0.5,
                                          baseline=True)], seed=7)
    again = ec.Pipeline.from_recipe(pipe.to_recipe())
    assert again == pipe and again.passes[0].student == "mobilenet_v3_small"
    with_module = ec.passes.Distill(student=_student(), epochs=2)
    assert "student" not in with_module.to_recipe() and "teacher" not in with_module.to_recipe()


def test_student_by_name_is_built_for_the_data(trained_resnet, digits):
    step = ec.passes.Distill(student="small_cnn", epochs=1, max_batches=3, measure=False)
    dm = ec.Pipeline([step], measure=False).run(trained_resnet, digits)
    assert type(dm.model).__name__ == "SmallCNN"


# -- bad input --------------------------------------------------------------------------------

def test_bad_options_fail_at_construction():
    for bad in ({"temperature": 0.0}, {"temperature": -1.0}, {"alpha": 1.5}, {"alpha": -0.1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ec.passes.Distill(student="small_cnn", **bad)
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ec.Distill.recover(**bad)
    with pytest.raises(ConfigError, match="needs student="):
        ec.passes.Distill()
    with pytest.raises(ConfigError, match="unknown student"):
        ec.passes.Distill(student="alexnet_tiny")
    with pytest.raises(ConfigError, match="hints"):
        ec.passes.Distill(student="small_cnn", hints={"a": 3})


def test_output_size_mismatch_fails_before_training(trained_resnet, digits, tmp_path):
    five = _student(num_classes=5)
    ckpt = tmp_path / "never.pt"
    with pytest.raises(ConfigError, match=r"teacher outputs shape \(1, 10\) but the student "
                                          r"outputs \(1, 5\)"):
        ec.passes.Distill(teacher=trained_resnet, student=five).check_data(digits)
    step = ec.passes.Distill(student=five, checkpoint=str(ckpt))
    with pytest.raises(ConfigError, match="same number of classes"):
        ec.Pipeline([step], measure=False).run(trained_resnet, digits)
    assert not ckpt.exists()  # no epoch ran


def test_no_training_data_fails_before_anything_runs(trained_resnet, digits):
    val_only = ec.DataBundle(val=digits.val, num_classes=10)
    step = ec.passes.Distill(student=_student())
    with pytest.raises(DataError, match="DataBundle.train"):
        ec.Pipeline([step], measure=False).run(trained_resnet, val_only)


def test_same_batches_replays_augmented_batches(digits):
    aug = ec.data.RandomShiftFlip(digits.train, pad=2, seed=5)
    with same_batches(aug):
        first = [x for x, _ in aug][:3]
    again = [x for x, _ in aug][:3]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    after = [x for x, _ in aug][:3]  # outside the context the draws move on
    assert not all(torch.equal(a, b) for a, b in zip(first, after))
