"""The benchmark detector: Ultralytics' YOLOv8n architecture built from its yaml (random init),
its own training loss, a torchvision-NMS decode and pycocotools mAP.

Ultralytics is AGPL: it is used here (benchmarks/tests) as a model zoo and for its loss, never
copied into the library. The trained weights are saved as safetensors (tensors only) and the
architecture as plain JSON beside them, so nothing is unpickled when they are loaded again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

# Ultralytics writes a settings file and may look things up online: neither here
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))

SHAPES = ("circle", "square", "triangle", "cross")
# object sizes in pixels are the same in training (small images, fast) and evaluation (320):
# the detector is fully convolutional, so it sees the same objects, only more of them
EVAL_SIZE, EVAL_SCALE, EVAL_OBJECTS = 320, (0.06, 0.25), 6


def build_yolo(num_classes: int, width: float = 0.25, depth: float = 0.33) -> torch.nn.Module:
    """YOLOv8 at the given width/depth multiples (0.25/0.33 = YOLOv8n), random init."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = copy.deepcopy(yaml_model_load("yolov8n.yaml"))
    cfg["scales"], cfg["scale"] = {"n": [depth, width, 1024]}, "n"
    model = DetectionModel(cfg, nc=num_classes, verbose=False)
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)  # Ultralytics' default gains
    return model


class YoloLoss:
    """``loss(model, x, targets)``: Ultralytics' v8 detection loss for edgecompress' training
    loop; ``targets`` are per-image dicts (boxes xyxy in input pixels, labels)."""

    def __init__(self, model: torch.nn.Module):
        from ultralytics.utils.loss import v8DetectionLoss

        # the criterion keeps only strides / class count / reg_max: it survives pruning and QAT
        self.criterion = v8DetectionLoss(model)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, targets: Sequence[dict]) -> torch.Tensor:
        self.criterion.device = x.device
        batch = yolo_batch(x, targets)
        loss, _ = self.criterion(ultralytics_model(model)(x), batch)
        return loss.sum()


class DistillYoloLoss(YoloLoss):
    """Ultralytics' loss plus output distillation from a frozen teacher (the unpruned model):
    the student's class logits learn the teacher's scores (BCE, normalised by the teacher's
    total score as Ultralytics normalises by its targets') and its box distributions the
    teacher's (KL over the DFL bins, weighted by the teacher's best score at each anchor, so
    background anchors do not dominate). Same gains as Ultralytics' cls / dfl terms."""

    def __init__(self, model: torch.nn.Module, teacher: torch.nn.Module, weight: float = 1.0):
        super().__init__(model)
        self.teacher = copy.deepcopy(ultralytics_model(teacher)).eval().requires_grad_(False)
        self.weight = weight
        self.last: dict[str, float] = {}
        self.calls = 0

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, targets: Sequence[dict]) -> torch.Tensor:
        self.criterion.device = x.device
        student = ultralytics_model(model)(x)
        task, _ = self.criterion(student, yolo_batch(x, targets))
        with torch.no_grad():
            _, teacher = self.teacher.to(x.device)(x)
        kd = distill_terms(student, teacher, self.criterion.reg_max)
        self.last = {"task": float(task.sum()) / len(x), **{k: float(v) for k, v in kd.items()}}
        self.calls += 1
        if self.calls % 25 == 1:
            logging.getLogger("detect").info("recovery step %d: %s", self.calls,
                                             {k: round(v, 4) for k, v in self.last.items()})
        return task.sum() + self.weight * len(x) * (0.5 * kd["cls"] + 1.5 * kd["dfl"])


def distill_terms(student: dict, teacher: dict, reg_max: int) -> dict[str, torch.Tensor]:
    """Per-image distillation terms between two YOLO raw heads (train-mode dicts)."""
    import torch.nn.functional as F

    t_prob = teacher["scores"].sigmoid()
    cls = F.binary_cross_entropy_with_logits(student["scores"], t_prob, reduction="sum")
    weight = t_prob.amax(1, keepdim=True)  # (B, 1, A)
    b, _, a = student["boxes"].shape
    s_bins = student["boxes"].view(b, 4, reg_max, a).log_softmax(2)
    t_bins = teacher["boxes"].view(b, 4, reg_max, a).softmax(2)
    kl = (t_bins * (t_bins.clamp_min(1e-9).log() - s_bins)).sum(2)  # (B, 4, A)
    return {"cls": cls / t_prob.sum().clamp_min(1.0),
            "dfl": (kl * weight).sum() / (4 * weight.sum()).clamp_min(1.0)}


def ultralytics_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Ultralytics DetectionModel inside export wrappers (its train-mode outputs feed the
    loss; a wrapper's forward returns the eval head only)."""
    for _ in range(4):
        if hasattr(model, "yaml"):
            return model
        model = getattr(model, "model", model)
    return model


def yolo_batch(x: torch.Tensor, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Ultralytics' batch dict: normalised cx,cy,w,h boxes with an image index per box."""
    h, w = x.shape[-2:]
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        b = torch.as_tensor(np.asarray(t["boxes"]), dtype=torch.float32).reshape(-1, 4)
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                              (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
        boxes.append(cxcywh)
        cls.append(torch.as_tensor(np.asarray(t["labels"]), dtype=torch.float32).reshape(-1, 1))
        idx.append(torch.full((len(b),), float(i)))
    return {"img": x, "batch_idx": torch.cat(idx).to(x.device), "cls": torch.cat(cls).to(x.device),
            "bboxes": torch.cat(boxes).to(x.device)}


def decode(raw: np.ndarray, conf: float = 0.001, iou: float = 0.6, max_det: int = 300) -> list[dict]:
    """Raw YOLO eval head (B, 4 + C, A) → per-image dicts (boxes xyxy, scores, labels)."""
    import torchvision

    out = []
    for p in torch.as_tensor(np.asarray(raw, np.float32)):
        p = p.T  # (A, 4 + C)
        scores, labels = p[:, 4:].max(1)
        keep = scores > conf
        p, scores, labels = p[keep], scores[keep], labels[keep]
        cx, cy, bw, bh = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        k = torchvision.ops.batched_nms(boxes, scores, labels, iou)[:max_det]
        out.append({"boxes": boxes[k].numpy(), "scores": scores[k].numpy(),
                    "labels": labels[k].numpy().astype(np.int64)})
    return out


def coco_map(preds: Sequence[dict], targets: Sequence[dict], num_classes: int) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 with pycocotools (boxes xyxy, same pixel space for both)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i, "width": 1, "height": 1})
        for b, c in zip(np.asarray(t["boxes"]), np.asarray(t["labels"])):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                         "bbox": _xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        for b, s, c in zip(np.asarray(p["boxes"]), np.asarray(p["scores"]), np.asarray(p["labels"])):
            dets.append({"image_id": i, "category_id": int(c), "bbox": _xywh(b), "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not dets:
            return {"map50": 0.0, "map50_95": 0.0}
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return {"map50": round(float(ev.stats[1]), 4), "map50_95": round(float(ev.stats[0]), 4)}


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, batch_size: int = 16,
             box_scale: float = 1.0) -> dict[str, float]:
    """mAP of a torch detector on a DetectionSet (square images of the input size);
    ``box_scale`` turns the model's boxes into pixels (the input size for fractions)."""
    model.eval()
    preds = []
    for i in range(0, len(data), batch_size):
        x = torch.stack([torch.from_numpy(data.image(j).transpose(2, 0, 1).copy()).float() / 255
                         for j in range(i, min(i + batch_size, len(data)))])
        out = model(x)
        raw = (out[0] if isinstance(out, (tuple, list)) else out).numpy().copy()
        raw[:, :4] *= box_scale
        preds += decode(raw)
    return coco_map(preds, data.targets, len(data.class_names))


def eval_set(n: int = 200, seed: int = 1):
    """The held-out split: generated with its own seed (training uses seeds >= 10,000)."""
    from edgecompress.data import synthetic_detection

    return synthetic_detection(n, size=EVAL_SIZE, seed=seed, classes=SHAPES, scale=EVAL_SCALE,
                               max_objects=EVAL_OBJECTS)


def save(model: torch.nn.Module, path: Path, arch: dict[str, Any]) -> None:
    """Weights as safetensors + the architecture as JSON beside them (atomic)."""
    from safetensors.torch import save_file

    from edgecompress._io import atomic_path

    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp))
    with atomic_path(path.with_suffix(".json"), overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(arch, indent=1))


def load(path: Path) -> torch.nn.Module:
    """The trained detector saved by :func:`save` (no pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    arch = json.loads(path.with_suffix(".json").read_text())
    model = build_yolo(arch["num_classes"], arch["width"], arch["depth"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def arch_of(path: Path) -> str:
    """A one-line description of the saved detector (for result tables)."""
    a = json.loads(Path(path).with_suffix(".json").read_text())
    return (f"{a['arch']} width {a['width']} depth {a['depth']}, {a['num_classes']} classes, "
            f"trained {a.get('step')} steps, held-out mAP@0.5 at save {a.get('val', {}).get('map50')}")
