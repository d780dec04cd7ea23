"""runner.detect in every format equals the torch reference's decode + NMS on a fixed image
(same boxes, IoU >= 0.9, same classes), and the recognised detectors (Ultralytics YOLOv8n from
its yaml, torchvision SSDlite; random init) export their raw head with the spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.data.bundle import Preprocess
from edgecompress.runtime.detect import decode, image_input, to_image

from test_detect import HEAD, tiny_detector

IMAGE = np.random.default_rng(7).integers(0, 255, (48, 80, 3), dtype=np.uint8)


def _reference(model: torch.nn.Module, runner, head: ec.DetectionHead, size: tuple[int, int]):
    """The torch model's detections on the image as the runner prepares it."""
    x, geometry = image_input(IMAGE, runner)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return to_image(decode({"output": out.numpy()}, head, size)[0], geometry)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def assert_same_detections(got: dict, want: dict) -> None:
    assert len(want["boxes"]) > 0, "the reference finds nothing: the test would prove nothing"
    assert len(got["boxes"]) == len(want["boxes"])
    for box, label in zip(want["boxes"], want["labels"]):
        best = max((_iou(box, g) for g, gl in zip(got["boxes"], got["labels"]) if gl == label),
                   default=0.0)
        assert best >= 0.9, (box, label, got)


FORMATS = [("onnx", "det.onnx", "onnxruntime"), ("torch", "det.ecm", "torch"),
           ("ncnn", "det_ncnn", "ncnn"), ("openvino", "det_ov", "openvino"),
           ("tflite", "det.tflite", "litert_torch")]


@pytest.fixture(scope="module")
def tiny_dm():
    model, data = tiny_detector()
    return model, ec.Pipeline([], measure=False).run(model, data, head=HEAD)


@pytest.mark.parametrize("fmt,name,module", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_formats_runner_detects_what_torch_does(tiny_dm, tmp_path, fmt, name, module):
    pytest.importorskip(module)
    model, dm = tiny_dm
    art = dm.export(fmt, tmp_path / name, benchmark_runs=0)
    assert art.parity.passed and art.parity.metric == "detection_agreement"
    runner = ec.load(tmp_path / name)
    assert_same_detections(runner.detect(IMAGE), _reference(model, runner, HEAD, (64, 64)))


def yolov8n(classes: int = 3) -> torch.nn.Module:
    """Ultralytics YOLOv8n from its yaml, random init made to detect something: its
    activations vanish layer by layer with eval BatchNorm at the initial statistics (set them
    from one batch), class scores start near 0.01 and every box spans the image (zero the
    class biases, favour short DFL distances)."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    yolo = tasks.DetectionModel("yolov8n.yaml", nc=classes, verbose=False)
    for m in yolo.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the running statistics become those of the next batch
    with torch.no_grad():
        yolo.train()(torch.rand(8, 3, 64, 64))
        for branch in yolo.model[-1].cv3:
            branch[-1].bias.zero_()
        for branch in yolo.model[-1].cv2:
            branch[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
    return yolo.eval()


def test_ultralytics_yolov8n_is_recognised_and_detects_through_onnx(tmp_path):
    yolo = yolov8n()
    x = torch.rand(2, 3, 64, 64)
    data = ec.DataBundle(example_input=x[:1], val=[(x, None)],
                         preprocess=Preprocess(resize="letterbox"))
    dm = ec.Pipeline([], measure=False).run(yolo, data)  # task inferred from the model
    assert dm.info["detection"]["kind"] == "yolo" and dm.info["detection"]["normalized"]
    with torch.no_grad():  # the raw head (C2f blocks split for pruning) computes the same
        want = yolo(x)[0]
        assert torch.allclose(dm.model(x), torch.cat([want[:, :4] / 64, want[:, 4:]], 1),
                              atol=1e-5)
    assert sum(type(m).__name__ == "SplitC2f" for m in dm.model.modules()) == 8
    art = dm.export("onnx", tmp_path / "yolo.onnx", benchmark_runs=0)
    assert art.parity.task == "detect" and art.parity.passed
    runner = ec.load(tmp_path / "yolo.onnx")
    head = ec.DetectionHead.from_dict(runner.metadata["detection"])
    assert_same_detections(runner.detect(IMAGE), _reference(dm.model, runner, head, (64, 64)))


def test_torchvision_ssdlite_exports_its_raw_head_and_detects(tmp_path):
    tv = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    ssd = tv.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    with torch.no_grad():  # torchvision's head starts near zero: every score 1/3, all ties
        for p in ssd.head.classification_head.parameters():
            p.normal_(0.0, 0.3)
    x = torch.rand(2, 3, 64, 64)
    dm = ec.Pipeline([], measure=False).run(ssd.eval(), ec.DataBundle(example_input=x[:1],
                                                                       val=[(x, None)]))
    spec = dm.info["detection"]
    assert spec["kind"] == "boxes_scores" and spec["multi_label"]
    raw = dm.model
    with torch.no_grad():  # the batched decode is torchvision's box coding
        reg = torch.randn(1, raw.anchor_sizes.shape[0], 4) * 0.5
        anchors = torch.cat([raw.anchor_centres - raw.anchor_sizes / 2,
                             raw.anchor_centres + raw.anchor_sizes / 2], 1)
        want = (ssd.box_coder.decode_single(reg[0], anchors) / 64).clamp(0, 1)
    assert torch.allclose(raw.decode(reg)[0], want, atol=1e-5)
    art = dm.export("onnx", tmp_path / "ssd.onnx", benchmark_runs=0)
    # NMS now runs in the runtime on the raw head: FP32 agrees (task23 saw 63.5 % with
    # torchvision's in-graph NMS on tied scores)
    assert art.parity.passed, art.parity
    runner = ec.load(tmp_path / "ssd.onnx")
    head = ec.DetectionHead.from_dict(spec)
    got = runner.detect(IMAGE)
    want = _reference(dm.model, runner, head, (64, 64))
    assert len(got["boxes"]) == len(want["boxes"]) > 0
    assert np.allclose(np.sort(got["scores"]), np.sort(want["scores"]), atol=1e-4)
