"""Detectors as exportable modules: the raw head out, decode + NMS left to the runtime.

A detector's own eval ``forward`` ends in NMS (torchvision) or returns training features
beside its predictions (Ultralytics), neither of which converts to TFLite or ncnn, and NMS in an
INT8 graph is fragile. :func:`prepare` wraps a recognised detector so that it returns one tensor
of decoded boxes and class scores, and records a :class:`~edgecompress.detection.DetectionHead`
on the wrapper (an attribute, which survives ``copy.deepcopy``) for the artifact's metadata.
Recognised (duck-typed, nothing imported for it):

- Ultralytics ``DetectionModel`` (YOLOv8 / YOLO11 / YOLOv5u ... whose last layer is a plain
  ``Detect``): ``output[0]`` (N, 4 + C, A), boxes divided by the input size (``normalized``).
- torchvision ``SSD`` / ``SSDlite``: backbone + head at the input's size, boxes decoded against
  anchors made once for that size, softmax scores without the background column, as (N, A, 4 +
  C); class id ``k`` is torchvision's label ``k + 1``.

Any other model with ``task="detect"`` needs a ``head=`` that describes its outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..detection import DetectionHead
from ..errors import ConfigError

HEAD_ATTR = "edgecompress_detection"


def head_on(model: Any) -> DetectionHead | None:
    """The detection spec attached to ``model`` by :func:`prepare` (None: not a detector)."""
    head = getattr(model, HEAD_ATTR, None)
    return head if isinstance(head, DetectionHead) else None


def detector_head_modules(model: Any) -> list[str]:
    """Names of the modules forming a wrapped detector's head (what pruning keeps whole by
    default: box and class branches pruned apart lose the coupling their outputs share)."""
    names = getattr(model, "head_modules", None)
    return list(names()) if callable(names) and head_on(model) is not None else []


def recognised(model: Any) -> str | None:
    """``"ultralytics"``, ``"torchvision_ssd"`` or None: which known detector ``model`` is."""
    layers = getattr(model, "model", None)
    last = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if last is not None and type(last).__name__ == "Detect" and hasattr(last, "nc"):
        return "ultralytics"
    names = {c.__name__ for c in type(model).__mro__}
    if "SSD" in names and all(hasattr(model, a) for a in ("anchor_generator", "box_coder", "head")):
        return "torchvision_ssd"
    return None


def prepare(model: Any, example: Any, task: str = "auto",
            head: DetectionHead | None = None) -> Any:
    """``model`` ready to export as a detector (or unchanged when it is not one).

    ``head`` describes the outputs of a model that already returns raw detector outputs;
    otherwise a recognised detector is wrapped (see the module docstring). ``task="detect"``
    with neither raises a ConfigError saying what to pass.
    """
    if head_on(model) is not None:
        return model
    if head is not None:
        return _attach(model, head)
    kind = recognised(model)
    if kind == "ultralytics":
        return _attach(YOLORawHead(model), _yolo_head(model))
    if kind == "torchvision_ssd":
        if not isinstance(example, torch.Tensor) or example.ndim != 4:
            raise ConfigError("a torchvision SSD detector needs an (N, 3, H, W) example input "
                              "(DataBundle(example_input=...)) to make its anchors for")
        return _attach(SSDRawHead(model, tuple(example.shape[-2:])), _ssd_head(model))
    if task == "detect":
        raise ConfigError(
            f"task='detect' for a {type(model).__name__}, which is not a recognised detector "
            f"(Ultralytics DetectionModel, torchvision SSD/SSDlite): describe its outputs with "
            f"head=ec.DetectionHead(kind='yolo' | 'boxes_scores', ...)")
    return model


def _attach(model: nn.Module, head: DetectionHead) -> nn.Module:
    setattr(model, HEAD_ATTR, head)
    return model


def _names(model: Any) -> tuple[str, ...]:
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        return tuple(str(names[k]) for k in sorted(names))
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) else ()


def _yolo_head(model: Any) -> DetectionHead:
    # Ultralytics' own predict defaults: conf 0.25, iou 0.7, 300 detections
    return DetectionHead("yolo", score_threshold=0.25, iou_threshold=0.7, max_detections=300,
                         normalized=True, class_names=_names(model))


def _ssd_head(model: Any) -> DetectionHead:
    # torchvision's own postprocess settings, one candidate per class (its rule)
    return DetectionHead("boxes_scores", score_threshold=float(model.score_thresh),
                         iou_threshold=float(model.nms_thresh),
                         max_detections=int(model.detections_per_img), multi_label=True,
                         normalized=True)


class YOLORawHead(nn.Module):
    """An Ultralytics detector returning only its decoded head (N, 4 + C, A), boxes as
    fractions of the input size so boxes and scores share one INT8 output scale. Its C2f
    blocks are rewritten for pruning (:mod:`.yolo_blocks`; the wrapped model is the pipeline's
    copy, never the user's)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from .yolo_blocks import split_c2f

        split_c2f(model)  # same outputs; lets structured pruning follow C2f's channels
        self.model = model

    def head_modules(self) -> list[str]:
        return [f"model.model.{len(self.model.model) - 1}"]

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        if self.training:  # Ultralytics' training outputs, what its loss reads
            return out
        y = out[0] if isinstance(out, (tuple, list)) else out
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = torch.tensor([w, h, w, h], dtype=y.dtype, device=y.device)
        return torch.cat([y[:, :4] / size.view(1, 4, 1), _class_scores(out, y)], 1)


def _class_scores(out: Any, y: torch.Tensor) -> torch.Tensor:
    """The per-class scores from the class logits when the head hands them out (Ultralytics
    8.4: ``(y, {"scores": logits, ...})``), not from ``y``: ``y`` joins pixel boxes and scores in
    one tensor, which INT8 gives one scale (~1.25 px per step at 320 px), rounding every score
    to 0 or 1.25 (measured on a trained YOLOv8n: mAP 0.0)."""
    raw = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
    if isinstance(raw, dict) and isinstance(raw.get("scores"), torch.Tensor):
        return raw["scores"].sigmoid()
    return y[:, 4:]


class SSDRawHead(nn.Module):
    """A torchvision SSD without its resize and NMS: boxes decoded against anchors made once
    for ``image_size`` (fractions of it, clipped to the image) and softmax class scores
    without the background column, as one (N, A, 4 + C) tensor."""

    def __init__(self, ssd: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head = ssd.backbone, ssd.head
        t = ssd.transform
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std).view(1, -1, 1, 1))
        h, w = int(image_size[0]), int(image_size[1])
        probe = torch.zeros(1, 3, h, w)
        with torch.no_grad():
            feats = self._features((probe - self.mean) / self.std)
            anchors = ssd.anchor_generator(ImageList(probe, [(h, w)]), feats)[0]
        # anchors as centre and size, (A, 2) each: the decode below broadcasts them over the
        # batch with no strided slicing (ncnn has no layer for Tensor.slice with a step)
        wh = anchors[:, 2:] - anchors[:, :2]
        self.register_buffer("anchor_centres", anchors[:, :2] + 0.5 * wh)
        self.register_buffer("anchor_sizes", wh)
        self.register_buffer("weights", torch.tensor(ssd.box_coder.weights, dtype=torch.float32))
        self.clip = float(ssd.box_coder.bbox_xform_clip)
        self.register_buffer("scale", torch.tensor([w, h], dtype=torch.float32))

    def head_modules(self) -> list[str]:
        return ["head"]

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return list(feats.values()) if isinstance(feats, dict) else [feats]

    def decode(self, regression: torch.Tensor) -> torch.Tensor:
        """SSD's box coding (torchvision's ``BoxCoder.decode_single``, batched): offsets of
        the centre in anchor sizes, log size ratios; corners as fractions of the input."""
        offsets, log_sizes = regression.split(2, dim=-1)
        centres = offsets / self.weights[:2] * self.anchor_sizes + self.anchor_centres
        sizes = torch.exp((log_sizes / self.weights[2:]).clamp(max=self.clip)) * self.anchor_sizes
        corners = torch.cat([centres - 0.5 * sizes, centres + 0.5 * sizes], dim=-1)
        return (corners / self.scale.repeat(2)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self._features((x - self.mean) / self.std))
        scores = torch.softmax(out["cls_logits"], dim=-1)[..., 1:]
        return torch.cat([self.decode(out["bbox_regression"]), scores], dim=-1)


__all__ = ["HEAD_ATTR", "SSDRawHead", "YOLORawHead", "detector_head_modules", "head_on", "prepare",
           "recognised"]
