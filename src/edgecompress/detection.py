"""What a detector's outputs mean: the post-processing spec every detector artifact carries.

A :class:`DetectionHead` says how to turn the raw outputs of a detector into boxes (it is
stored in the artifact's metadata under ``"detection"`` and read back by the runtime, which
decodes and runs NMS in numpy, so a device needs no torch):

- ``kind="yolo"``: anchor-free YOLO-style outputs (YOLOv8 / YOLO11 eval ``output[0]``): boxes
  as centre x, y, width, height in input pixels (or fractions of it: ``normalized``) and
  per-class scores already through a sigmoid, channel-first: one output (N, 4 + C, A), or two
  outputs (N, 4, A) and (N, C, A).
- ``kind="boxes_scores"``: boxes decoded against the anchors in the graph (SSD-style), corner
  form x1, y1, x2, y2 in input pixels (or fractions), and class probabilities without a
  background column: one output (N, A, 4 + C), or two outputs (N, A, 4) and (N, A, C).

Class ids start at 0 and index ``class_names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ArtifactError, ConfigError

KINDS = ("yolo", "boxes_scores")
METADATA_KEY = "detection"


@dataclass(frozen=True)
class DetectionHead:
    """How a detector's outputs become detections (decode, score threshold, NMS).

    Attributes:
        kind: ``"yolo"`` or ``"boxes_scores"`` (see the module docstring).
        outputs: the output names read, in order (empty: the artifact's outputs in order).
        score_threshold: candidates scoring at most this are dropped before NMS.
        iou_threshold: NMS drops a box overlapping a better one of its class by more than this.
        max_detections: detections kept per image, best first.
        max_candidates: candidates (best scores) that enter NMS per image.
        normalized: boxes are fractions of the input's width and height (what INT8 needs when
            boxes and scores share one output: one quantization scale fits both) instead of
            input pixels.
        multi_label: one candidate per class above the threshold (torchvision's SSD rule)
            instead of the best class of each anchor (Ultralytics' default).
        class_names: the name of each class id.
    """

    kind: str
    outputs: tuple[str, ...] = ()
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    max_candidates: int = 3000
    normalized: bool = False
    multi_label: bool = False
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"DetectionHead kind {self.kind!r} is unknown; expected one of "
                              f"{', '.join(KINDS)}")
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"DetectionHead {name} must lie in [0, 1]; got {value}")
        for name in ("max_detections", "max_candidates"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"DetectionHead {name} must be at least 1; got "
                                  f"{getattr(self, name)}")
        if len(self.outputs) > 2:
            raise ConfigError(f"DetectionHead reads one or two outputs; got {list(self.outputs)}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what the artifact's metadata stores)."""
        return {"kind": self.kind, "outputs": list(self.outputs),
                "score_threshold": float(self.score_threshold),
                "iou_threshold": float(self.iou_threshold),
                "max_detections": int(self.max_detections),
                "max_candidates": int(self.max_candidates), "multi_label": bool(self.multi_label),
                "normalized": bool(self.normalized), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "metadata") -> "DetectionHead":
        """The spec stored by :meth:`to_dict` (ArtifactError when it is not one)."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{where}: 'detection' must be an object; got {type(d).__name__}")
        try:
            return cls(kind=str(d["kind"]), outputs=tuple(str(o) for o in d.get("outputs", ())),
                       score_threshold=float(d.get("score_threshold", 0.25)),
                       iou_threshold=float(d.get("iou_threshold", 0.45)),
                       max_detections=int(d.get("max_detections", 100)),
                       max_candidates=int(d.get("max_candidates", 3000)),
                       multi_label=bool(d.get("multi_label", False)),
                       normalized=bool(d.get("normalized", False)),
                       class_names=tuple(str(c) for c in d.get("class_names", ())))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"{where}: 'detection' is not a usable detection spec "
                                f"({exc}); re-export the model") from None

    def with_classes(self, class_names: Any) -> "DetectionHead":
        """This spec with ``class_names`` when it has none of its own."""
        if self.class_names or not class_names:
            return self
        from dataclasses import replace

        return replace(self, class_names=tuple(str(c) for c in class_names))


def head_of(metadata: Mapping[str, Any] | None) -> DetectionHead | None:
    """The detection spec recorded in an artifact's ``metadata`` (None: not a detector)."""
    spec = (metadata or {}).get(METADATA_KEY)
    return DetectionHead.from_dict(spec) if spec else None


__all__ = ["KINDS", "METADATA_KEY", "DetectionHead", "head_of"]
