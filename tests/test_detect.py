"""Detection in the runtime: numpy NMS (checked against torchvision), decode of raw heads,
letterbox geometry, and a declared detector through the pipeline to ``runner.detect``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.data.bundle import Preprocess
from edgecompress.errors import ConfigError, InputError
from edgecompress.runtime.detect import batched_nms, decode, place, to_image

tv_ops = pytest.importorskip("torchvision.ops")
SRC = Path(__file__).resolve().parents[1] / "src"
BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # import torch now raises ImportError\n"


def _random_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_nms_keeps_what_torchvision_keeps(seed):
    boxes, scores, labels = _random_boxes(300, seed)
    want = tv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                              torch.from_numpy(labels), 0.5).numpy()
    assert np.array_equal(batched_nms(boxes, scores, labels, 0.5), want)


def test_yolo_decode_takes_the_best_class_above_the_threshold():
    # (1, 4 + 2, 3): anchors as cx, cy, w, h; the third anchor scores below the threshold
    head = np.array([[[10, 50, 12], [10, 50, 12], [4, 10, 4], [4, 10, 4],
                      [0.9, 0.1, 0.2], [0.3, 0.8, 0.1]]], np.float32)
    det = decode({"output": head}, ec.DetectionHead("yolo", score_threshold=0.25), (64, 64))[0]
    assert det["labels"].tolist() == [0, 1]
    assert np.allclose(det["boxes"], [[8, 8, 12, 12], [45, 45, 55, 55]])
    assert np.allclose(det["scores"], [0.9, 0.8])


def test_letterbox_places_the_image_and_maps_boxes_back():
    image = np.zeros((50, 100, 3), np.uint8)
    placed, g = place(image, (64, 64), {"resize": "letterbox", "pad_value": 114})
    assert placed.shape == (64, 64, 3) and (g.pad_x, g.pad_y) == (0, 16)
    assert placed[0, 0, 0] == 114 and placed[32, 32, 0] == 0
    back = to_image({"boxes": np.array([[0, 16, 64, 48], [32, 0, 64, 20]], np.float32),
                     "scores": np.ones(2), "labels": np.zeros(2, int)}, g)
    assert np.allclose(back["boxes"], [[0, 0, 100, 50], [50, 0, 100, 6.25]])


class TinyYolo(nn.Module):
    """A YOLO-style head: an 8×8 grid on 64×64 inputs, boxes cx, cy, w, h in input pixels."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                  nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.box, self.cls = nn.Conv2d(16, 4, 1), nn.Conv2d(16, classes, 1)
        gy, gx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy]).reshape(1, 2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        b = torch.sigmoid(self.box(f).flatten(2))
        centres = (self.grid + b[:, :2]) * 8.0
        sizes = b[:, 2:] * 32.0 + 4.0
        return torch.cat([centres, sizes, torch.sigmoid(self.cls(f).flatten(2))], 1)


def tiny_detector() -> tuple[nn.Module, ec.DataBundle]:
    torch.manual_seed(0)
    model = TinyYolo().eval()
    with torch.no_grad():
        model.cls.bias.normal_(0, 1.5)  # spread the scores: some anchors pass the threshold
    x = torch.rand(4, 3, 64, 64)
    return model, ec.DataBundle(example_input=x[:1], val=[(x, None)], class_names=["a", "b", "c"],
                                preprocess=Preprocess(resize="letterbox"))


HEAD = ec.DetectionHead("yolo", score_threshold=0.4, iou_threshold=0.5)


def test_a_declared_head_travels_to_the_artifact_and_detect_maps_to_image_pixels(tmp_path):
    model, data = tiny_detector()
    dm = ec.Pipeline([], measure=False).run(model, data, task="detect", head=HEAD)
    art = dm.export("onnx", tmp_path / "det.onnx", benchmark_runs=0)
    assert art.parity.task == "detect" and art.parity.passed
    assert art.parity.metric_extra["reference_detections"] > 0
    runner = ec.load(tmp_path / "det.onnx")
    assert runner.metadata["detection"]["class_names"] == ["a", "b", "c"]
    image = np.random.default_rng(0).integers(0, 255, (40, 120, 3), dtype=np.uint8)
    det = runner.detect(image)
    assert len(det["boxes"]) > 0 and det["labels"].dtype == np.int64
    assert (det["boxes"] >= 0).all() and (det["boxes"][:, [0, 2]] <= 120).all()
    assert (det["boxes"][:, [1, 3]] <= 40).all()
    called = runner(image)  # ec.load(path)(image) of a detector gives its detections
    assert np.array_equal(called["boxes"], det["boxes"])
    np.save(tmp_path / "image.npy", image)
    code = (BLOCK_TORCH + "import numpy as np, edgecompress as ec\n"
            f"d = ec.load({str(tmp_path / 'det.onnx')!r})(np.load({str(tmp_path / 'image.npy')!r}))\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "print(len(d['boxes']), float(d['boxes'].sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr  # the device side decodes without torch
    n, total = out.stdout.split()
    assert int(n) == len(det["boxes"]) and float(total) == pytest.approx(float(det["boxes"].sum()))


def test_detect_on_a_model_that_is_not_a_detector_says_so(tmp_path):
    from edgecompress.models import small_cnn

    data = ec.DataBundle(example_input=torch.rand(1, 1, 16, 16))
    dm = ec.Pipeline([], measure=False).run(small_cnn(width=4), data)
    dm.export("onnx", tmp_path / "cnn.onnx", benchmark_runs=0)
    with pytest.raises(InputError, match="not a detector artifact"):
        ec.load(tmp_path / "cnn.onnx").detect(np.zeros((16, 16, 3), np.uint8))


def test_task_detect_without_a_head_for_an_unknown_model_is_refused():
    model, data = tiny_detector()
    with pytest.raises(ConfigError, match="head=ec.DetectionHead"):
        ec.Pipeline([], measure=False).run(model, data, task="detect")


def test_with_box_labels_the_artifact_records_its_map_and_the_delta(tmp_path):
    model, data = tiny_detector()
    x = data.example_input.repeat(3, 1, 1, 1) + torch.rand(3, 3, 64, 64) * 0.5
    with torch.no_grad():  # targets = the float model's own detections: its mAP is 1
        targets = decode({"output": model(x).numpy()}, HEAD, (64, 64))
    labelled = ec.DataBundle(example_input=x[:1], val=[(x, targets)], preprocess=data.preprocess)
    dm = ec.Pipeline([], measure=False).run(model, labelled, head=HEAD)
    art = dm.export("onnx", tmp_path / "det.onnx", benchmark_runs=0)
    maps = art.metadata["detection_map"]
    assert maps["reference_map50"] == pytest.approx(1.0) and maps["map50"] == pytest.approx(1.0)
    assert maps["map50_delta"] == pytest.approx(0.0, abs=1e-6) and maps["images"] == 3
    assert ec.load(tmp_path / "det.onnx").metadata["detection_map"]["map50"] == maps["map50"]


def _raw(scores: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """A chain of class-0 anchors A, B, C (IoU(A, B) = IoU(B, C) = 0.54, IoU(A, C) = 0.25)
    plus one far away, as a yolo head."""
    boxes = np.array([[20, 20, 10, 10], [23, 20, 10, 10], [26, 20, 10, 10], [60, 60, 8, 8]],
                     np.float32).T
    cls = np.array([[s0 for s0, _ in scores], [s1 for _, s1 in scores]], np.float32)
    return {"output": np.concatenate([boxes, cls])[None]}


def test_nms_ties_within_the_output_tolerance_are_not_disagreements():
    from edgecompress.export.detect_metric import detection_agreement

    head = ec.DetectionHead("yolo", score_threshold=0.25, iou_threshold=0.5).to_dict()
    ref = _raw([(0.800, 0.1), (0.799, 0.1), (0.798, 0.1), (0.9, 0.1)])  # NMS keeps A and C
    out = _raw([(0.799, 0.1), (0.800, 0.1), (0.798, 0.1), (0.9, 0.1)])  # B first: only B
    tied, record = detection_agreement(ref, out, head, tie_margin=0.01)
    assert record["strict_agreement"] == pytest.approx(2 / 3)  # C is lost to the tie flip
    assert tied == 1.0 and record["optional_reference"] == 1
    assert detection_agreement(ref, out, head, tie_margin=0.0)[0] == pytest.approx(2 / 3)
    far_lost = _raw([(0.800, 0.1), (0.799, 0.1), (0.798, 0.1), (0.2, 0.1)])
    # the far box is lost for real: A and C match, it does not
    assert detection_agreement(ref, far_lost, head, tie_margin=0.01)[0] == pytest.approx(2 / 3)


def test_a_detection_at_the_score_threshold_is_optional():
    from edgecompress.export.detect_metric import detection_agreement

    head = ec.DetectionHead("yolo", score_threshold=0.25, iou_threshold=0.5).to_dict()
    ref = _raw([(0.8, 0.1), (0.1, 0.1), (0.1, 0.1), (0.255, 0.1)])  # the far box just passes
    out = _raw([(0.8, 0.1), (0.1, 0.1), (0.1, 0.1), (0.245, 0.1)])  # ...and just misses here
    value, record = detection_agreement(ref, out, head, tie_margin=0.02)
    assert value == 1.0 and record["strict_agreement"] == 0.5
    assert record["optional_reference"] == 1
    assert detection_agreement(ref, out, head, tie_margin=0.001)[0] == 0.5
