"""QAT and prune recovery fine-tune a detector with the user's loss (FineTune(loss=...))."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.data import synthetic_detection
from edgecompress.errors import DataError

SIZE, STRIDE, CLASSES = 64, 8, 4


class TinyDetector(nn.Module):
    """A YOLO-shaped head: (B, 4 + C, A) with per-anchor box (cx, cy, w, h in pixels) and
    class logits on an 8×8 grid."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 4 + CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten(2)


class CentreCellLoss:
    """Each box is learnt by the grid cell holding its centre: L1 on the box, BCE on classes."""

    def __init__(self):
        self.label_types: set[str] = set()

    def __call__(self, model, x, targets):
        self.label_types.add(type(targets).__name__)
        out = model(x)  # (B, 4 + C, A)
        cells = SIZE // STRIDE
        box_loss, cls_target = out.new_zeros(()), torch.zeros_like(out[:, 4:])
        for i, t in enumerate(targets):
            b = torch.as_tensor(t["boxes"])
            centre = (b[:, :2] + b[:, 2:]) / 2
            a = (centre[:, 1] // STRIDE).long() * cells + (centre[:, 0] // STRIDE).long()
            want = torch.cat([centre, b[:, 2:] - b[:, :2]], 1) / SIZE
            box_loss = box_loss + (out[i, :4, a].T - want).abs().sum()
            cls_target[i, torch.as_tensor(t["labels"]), a] = 1.0
        bce = nn.functional.binary_cross_entropy_with_logits(out[:, 4:], cls_target)
        return box_loss / len(targets) + bce


@pytest.fixture(scope="module")
def shapes():
    return synthetic_detection(48, size=SIZE, seed=0, max_objects=2,
                               scale=(0.2, 0.4)).bundle(size=SIZE, batch_size=8, seed=0)


def _epoch_losses(dm, key):
    notes = {k: v for s in dm.report.stages for k, v in s.notes.items()}
    return [h["loss"] for h in notes[key]]


def test_qat_fine_tunes_a_detector_with_the_given_loss(shapes):
    loss = CentreCellLoss()
    qat = ec.passes.QuantizeQAT(samples=16, finetune=ec.FineTune(epochs=3, lr=3e-3, loss=loss))
    torch.manual_seed(0)  # the model's init, whatever tests ran before
    dm = ec.Pipeline([qat], measure=False).run(TinyDetector(), shapes)
    assert loss.label_types == {"list"}  # the per-image target dicts reached the loss
    losses = _epoch_losses(dm, "QAT_history")
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    assert dm.quant_recipe.source == "qat"


def test_prune_recovery_fine_tunes_a_detector_with_the_given_loss(shapes):
    torch.manual_seed(0)
    model = TinyDetector()
    before = copy.deepcopy(model.body[3].weight.shape)
    prune = ec.passes.StructuredPrune(ratio=0.3, finetune=ec.FineTune(
        epochs=2, lr=3e-3, loss=CentreCellLoss()))
    dm = ec.Pipeline([prune], measure=False).run(model, shapes)
    assert dm.model.body[3].weight.shape[0] < before[0]  # channels really removed
    assert dm.model.head.out_channels == 4 + CLASSES  # the head's outputs are kept whole
    notes = {k: v for s in dm.report.stages for k, v in s.notes.items()}
    assert any(k.endswith("_history") for k in notes), sorted(notes)


def test_default_cross_entropy_says_to_give_a_loss_for_detection_targets(shapes):
    qat = ec.passes.QuantizeQAT(samples=16, epochs=1, max_batches=1)
    with pytest.raises(DataError, match=r"FineTune\(loss="):
        ec.Pipeline([qat], measure=False).run(TinyDetector(), shapes)
