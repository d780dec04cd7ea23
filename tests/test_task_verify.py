"""Verification per task: every named output within its precision's bound, the task metric
(segmentation pixel agreement / mIoU, embedding cosine, detection box agreement), a user
metric, and an artifact that fails verification refused by default or kept marked FAIL."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.errors import ConfigError, ParityError
from edgecompress.export.detect_metric import detection_agreement
from edgecompress.export.tasks import infer_task
from edgecompress.models import small_cnn
from edgecompress.training import TrainConfig, cross_entropy_loss, train

FAST = {"benchmark_runs": 0, "parity_samples": 32}


class TinySegmenter(nn.Module):
    """Conv-BN-ReLU twice and a 1×1 classifier: (N, 3, H, W) images → (N, classes, H, W)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.body(x))}  # torchvision's segmentation output


@pytest.fixture(scope="module")
def images():
    return ec.data.digits(image_size=16, batch_size=32, seed=0, channels=3)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return TinySegmenter().eval()


def test_segmentation_fp32_onnx_is_judged_by_pixel_agreement(segmenter, images, tmp_path):
    dm = ec.Pipeline([], measure=False).run(segmenter, images)
    art = dm.export("onnx", tmp_path / "seg.onnx", **FAST)
    p = art.parity
    assert p.passed and p.task == "segment" and p.metric == "pixel_agreement", p
    assert p.metric_value == 1.0 and p.metric_extra["miou"] == 1.0
    (out,) = p.outputs
    assert out["name"] == "out" and out["shape"] == [32, 3, 16, 16]
    assert out["max_abs_diff"] < 1e-4 and out["cosine"] > 0.99999 and out["bound"] is not None
    assert art.accuracy is None  # digit labels are no masks: no pixel accuracy to measure
    row = art.metrics()
    assert row.task == "segment" and "pixels" in dm.report.artifact_rows()[-1][5]


def test_segmentation_int8_onnx_bound_is_in_quantization_steps(segmenter, images, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64, method="minmax")],
                     measure=False).run(segmenter, images)
    art = dm.export("onnx", tmp_path / "seg8.onnx", **FAST)
    p = art.parity
    assert art.precision == "int8-static" and p.passed and p.task == "segment", p
    assert art.notes["ort_kernels"].get("QLinearConv", 0) >= 2  # really int8 convs
    (out,) = p.outputs
    assert out["step"] > 0 and out["bound"] == pytest.approx(8 * out["step"])
    assert out["max_abs_diff"] <= out["bound"]
    assert p.metric_value >= 0.9 and 0.5 <= p.metric_extra["miou"] <= 1.0


class Regressor(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(),
                                 nn.Linear(32, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_regression_and_embedding_models_are_judged_by_cosine(images, tmp_path):
    torch.manual_seed(0)
    images = dataclasses.replace(images, num_classes=None, class_names=None)  # no classes
    regression = ec.Pipeline([], measure=False).run(Regressor(1).eval(), images)
    art = regression.export("onnx", tmp_path / "reg.onnx", **FAST)
    assert art.parity.task == "embedding" and art.parity.metric == "cosine"  # (N, 1): inferred
    assert art.parity.passed and art.parity.metric_value > 0.9999 and art.accuracy is None
    # (N, 16) looks like logits: an embedding model declares its task
    embedder = ec.Pipeline([], measure=False).run(Regressor(16).eval(), images)
    inferred = embedder.export("onnx", tmp_path / "e1.onnx", **FAST)
    declared = embedder.export("onnx", tmp_path / "e2.onnx", task="embedding", **FAST)
    assert inferred.parity.task == "classify" and declared.parity.task == "embedding"
    assert declared.parity.passed and declared.parity.metric_extra["mean_cosine"] > 0.9999
    with pytest.raises(ConfigError, match="task"):
        embedder.export("onnx", tmp_path / "e3.onnx", task="ranking", **FAST)


@pytest.fixture(scope="module")
def ptq(images):
    data = ec.data.digits(image_size=8, batch_size=64, seed=0)
    torch.manual_seed(0)
    model = small_cnn(width=16)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=2, lr=3e-3))
    return ec.Pipeline([ec.passes.QuantizePTQ(samples=128)], measure=False).run(model.eval(), data)


def _broken(ptq):
    """The PTQ model with a recipe whose 'learned' ranges are absurd (±1e-3): the INT8 file
    clips every activation, the simulated model (the reference) does not."""
    bad = {k: [-1e-3, 1e-3] for k in ptq.quant_recipe.ranges}
    return dataclasses.replace(ptq, quant_recipe=ptq.quant_recipe.replace(ranges=bad,
                                                                           ranges_kind="learned"))


def test_failed_int8_artifact_is_refused_and_the_old_file_kept(ptq, tmp_path):
    path = tmp_path / "m.onnx"
    good = ptq.export("onnx", path, **FAST)
    assert good.parity.passed and good.parity.outputs[0]["step_source"] == "recipe range"
    before = path.read_bytes()
    with pytest.raises(ParityError) as err:
        _broken(ptq).export("onnx", path, overwrite=True, **FAST)
    text = str(err.value)
    assert "quantization steps" in text and "nothing at" in text, text
    assert "skip=['features.0.0'" in text and "on_parity_fail='keep'" in text, text
    assert path.read_bytes() == before
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(ParityError):
        _broken(ptq).export("onnx", fresh, **FAST)
    assert not fresh.exists()


def test_failed_artifact_kept_on_request_is_marked_fail(ptq, tmp_path, caplog):
    broken = _broken(ptq)
    art = broken.export("onnx", tmp_path / "kept.onnx", on_parity_fail="keep", **FAST)
    assert art.path.exists() and not art.parity.passed and art.parity.failures
    assert art.metadata["verification"].startswith("FAIL") and not art.metadata["parity"]["passed"]
    with caplog.at_level(logging.WARNING, logger="edgecompress"):
        runner = ec.load(art.path)
    assert runner.metadata["verification"].startswith("FAIL")
    assert any("failed verification" in r.getMessage() for r in caplog.records)
    assert "FAIL" in broken.report.artifact_rows()[-1][5]
    assert "FAILED verification" in str(broken.report)
    assert "failed verification" in broken.report.to_markdown()


def test_user_metric_is_measured_reported_and_can_refuse(ptq, tmp_path):
    def within_half_logit(ref, out):  # fraction of samples whose logits stay within 0.5
        diff = np.abs(ref["output"] - out["output"]).max(axis=1)
        return float((diff <= 0.5).mean())

    art = ptq.export("onnx", tmp_path / "u.onnx", metric=within_half_logit,
                     metric_threshold=0.9, **FAST)
    assert art.parity.passed and art.parity.user_metric["name"] == "within_half_logit"
    assert art.parity.user_metric["value"] >= 0.9
    assert art.metrics().user_metric["value"] == art.parity.user_metric["value"]
    assert "within_half_logit" in str(art.parity)
    with pytest.raises(ParityError, match=r"\[within_half_logit 1 < 2\]"):
        ptq.export("onnx", tmp_path / "v.onnx", metric=within_half_logit, metric_threshold=2.0,
                   **FAST)
    assert not (tmp_path / "v.onnx").exists()


def test_tasks_are_inferred_from_the_reference_outputs():
    f = np.float32
    assert infer_task({"output": np.zeros((2, 10), f)}) == "classify"
    assert infer_task({"out": np.zeros((2, 3, 8, 8), f), "aux": np.zeros((2, 3, 8, 8), f)}) == "segment"
    assert infer_task({"logits": np.zeros((2, 5, 100), f)}) == "causal_lm"
    assert infer_task({"output_0_boxes": np.zeros((3, 4), f),
                       "output_0_scores": np.zeros(3, f)}) == "detect"
    assert infer_task({"output": np.zeros((2, 1), f)}) == "embedding"


def _head(boxes: list[list[float]], classes: int = 2) -> np.ndarray:
    """A raw YOLO-style head (1, 4 + classes, 16 anchors) holding (cx, cy, w, h, class, score)
    in its first anchors; the others score 0 (no object)."""
    head = np.zeros((1, 4 + classes, 16), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(boxes):
        head[0, :4, i] = cx, cy, w, h
        head[0, 4 + int(c), i] = s
    return head


def test_detection_agreement_matches_boxes_after_nms():
    ref = _head([[10, 10, 8, 8, 0, 0.9], [10.5, 10, 8, 8, 0, 0.8], [40, 40, 10, 10, 1, 0.7]])
    # NMS drops the overlapping second box: two detections in each
    same, record = detection_agreement({"output": ref}, {"output": ref.copy()})
    assert same == 1.0 and record["reference_detections"] == 2
    moved = ref.copy()
    moved[0, 0, 2] += 9  # the class-1 box moves by 90 % of its width
    half, _ = detection_agreement({"output": ref}, {"output": moved})
    assert half == 0.5
    rescored = ref.copy()
    rescored[0, 5, 2] = 0.4  # the class-1 box scores 0.3 lower: not the same detection
    assert detection_agreement({"output": ref}, {"output": rescored})[0] == 0.5


def test_causal_lm_logits_are_judged_by_next_token_agreement():
    transformers = pytest.importorskip("transformers")
    from edgecompress.export.compare import compare
    from edgecompress.export.verify import reference_outputs

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (4, 16))
    ref = reference_outputs(model, {"input_ids": ids})
    assert ref["logits"].shape == (4, 16, 64)
    half = {k: v.astype(np.float16).astype(np.float32) for k, v in ref.items()}
    p = compare(ref, half, "fp16", "torch model")
    assert p.task == "causal_lm" and p.metric == "next_token_agreement" and p.passed, p
    shuffled = {"logits": np.roll(ref["logits"], 1, axis=-1)}  # every prediction moves a token
    bad = compare(ref, shuffled, "fp16", "torch model", task="causal_lm")
    assert not bad.passed and bad.metric_value < 0.1 and any("next token" in f for f in bad.failures)


def test_a_large_int8_output_is_held_to_its_tail_quantile_not_its_single_worst_element():
    """A detector head's half a million values: a few elements 20 steps off pass (the true max
    is recorded), one in a hundred that far off fails; a small output with one such element
    fails as before."""
    from edgecompress.export.output_parity import LARGE_OUTPUT, compare_output

    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, size=LARGE_OUTPUT * 2).astype(np.float32)
    step = (ref.max() - ref.min()) / 255
    few, many = ref.copy(), ref.copy()
    few[:20] += 20 * step
    many[: ref.size // 100] += 20 * step
    kept = compare_output("head", ref, few, "int8-static")
    assert kept.passed and kept.max_abs_diff > 19 * step and kept.tail_abs_diff < step
    refused = compare_output("head", ref, many, "int8-static")
    assert not refused.passed and "quantile" in refused.reason
    small = compare_output("logits", ref[:10], few[:10], "int8-static")
    assert not small.passed and small.tail_abs_diff is None
