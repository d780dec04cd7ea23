"""detection_map: COCO mAP through faster-coco-eval / pycocotools on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec
from edgecompress.errors import DataError
from edgecompress.mean_ap import BACKENDS

TARGETS = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 50]], np.float32),
            "labels": np.array([0, 1])},
           {"boxes": np.array([[5, 5, 25, 15]], np.float32), "labels": np.array([1])}]


def _perfect() -> list[dict]:
    return [{**t, "scores": np.full(len(t["labels"]), 0.9, np.float32)} for t in TARGETS]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_perfect_prediction_scores_one(backend):
    result = ec.detection_map(_perfect(), TARGETS, class_names=["cat", "dog"], backend=backend)
    assert result.map50 == pytest.approx(1.0) and result.map50_95 == pytest.approx(1.0)
    assert sorted(result.per_class) == ["cat", "dog"]
    assert all(v == pytest.approx(1.0) for c in result.per_class.values() for v in c.values())
    assert result.n_images == 2 and result.backend == backend


def test_an_empty_prediction_scores_zero():
    empty = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}] * 2
    result = ec.detection_map(empty, TARGETS)
    assert (result.map50, result.map50_95) == (0.0, 0.0)
    assert result.per_class["0"]["map50"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_partial_prediction_has_the_hand_computed_value(backend):
    # two cats; the best-scored box is exact, the second overlaps the other cat with IoU 0.625
    targets = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), "labels": np.array([0, 0])}]
    preds = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 56.25]]), "labels": np.array([0, 0]),
              "scores": np.array([0.9, 0.8])}]
    result = ec.detection_map(preds, targets, backend=backend)
    # IoU thresholds 0.5, 0.55, 0.6 match both (AP 1); the 7 from 0.65 match one: precision 1
    # up to recall 0.5, i.e. 51 of COCO's 101 recall points
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx((3 + 7 * 51 / 101) / 10)


def test_a_false_positive_ranked_first_halves_precision():
    targets = [{"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([0])}]
    preds = [{"boxes": np.array([[30, 30, 40, 40], [0, 0, 10, 10]]), "labels": np.array([0, 0]),
              "scores": np.array([0.9, 0.5])}]
    # one recall step, reached at precision 1/2 (interpolated precision is 0.5 at every point)
    assert ec.detection_map(preds, targets).map50 == pytest.approx(0.5)


def test_bad_inputs_say_what_is_expected():
    with pytest.raises(DataError, match="one prediction dict per target"):
        ec.detection_map(_perfect()[:1], TARGETS)
    with pytest.raises(DataError, match="'scores'"):
        ec.detection_map([{"boxes": t["boxes"], "labels": t["labels"]} for t in TARGETS], TARGETS)
    with pytest.raises(DataError, match="no target has a box"):
        ec.detection_map([], [])
