"""Detection data a user already has: a COCO-format folder or a YOLO-format folder.

Both return a :class:`~edgecompress.data.detection.DetectionSet` whose images are paths (read
when used) and whose targets hold xyxy boxes in each image's own pixels, class ids 0..K-1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .detection import DetectionSet, Target
from .images import IMAGE_SUFFIXES


def load_coco_folder(images_dir: str | Path, annotations_json: str | Path) -> DetectionSet:
    """Images in ``images_dir`` labelled by a COCO ``instances_*.json``.

    Category ids (any integers) become class ids 0..K-1 in increasing id order, named by the
    categories' ``name``; ``bbox`` ``[x, y, w, h]`` becomes xyxy. Crowd annotations
    (``iscrowd: 1``) are left out: they mark regions COCO's own evaluation ignores."""
    images_dir, ann_path = Path(images_dir), Path(annotations_json)
    doc = _read_json(ann_path)
    cats = sorted(doc.get("categories") or [], key=lambda c: c["id"])
    if not cats:
        raise DataError(f"{ann_path}: no 'categories'; a COCO instances file lists "
                        f"[{{'id': 1, 'name': 'person'}}, ...]")
    class_of = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict[Any, list[dict]] = {im["id"]: [] for im in doc.get("images", [])}
    for a in doc.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        if a["image_id"] not in per_image or a["category_id"] not in class_of:
            raise DataError(f"{ann_path}: annotation {a.get('id')} names image "
                            f"{a['image_id']} / category {a['category_id']}, which the file "
                            f"does not list in 'images' / 'categories'")
        per_image[a["image_id"]].append(a)
    images, targets, ids = [], [], []
    for im in doc.get("images", []):
        images.append(_existing(images_dir / im["file_name"], ann_path))
        targets.append(_coco_target(per_image[im["id"]], class_of))
        ids.append(im["id"])
    if not images:
        raise DataError(f"{ann_path}: no 'images'; nothing to load")
    return DetectionSet(images, targets, [str(c["name"]) for c in cats],
                        name=f"coco:{ann_path.name}", ids=ids)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotations file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a COCO object with images/annotations/categories")
    return doc


def _existing(path: Path, source: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{source} names image {path}, which does not exist; pass the folder "
                        f"the file names are relative to as images_dir")
    return path


def _coco_target(anns: list[dict], class_of: dict[Any, int]) -> Target:
    xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    labels = np.asarray([class_of[a["category_id"]] for a in anns], np.int64)
    return {"boxes": boxes, "labels": labels}


def load_yolo_folder(root: str | Path, split: str = "val") -> DetectionSet:
    """A YOLO-format folder: ``images/`` with one ``labels/<stem>.txt`` per image.

    ``root`` is either a data set with a ``data.yaml`` (``names`` and ``train``/``val``/
    ``test`` image folders; ``split`` picks one) or a folder holding ``images/`` and ``labels/``
    (class names then come from a ``data.yaml`` or ``classes.txt`` beside it, else ``"0"``,
    ``"1"``, ...). Each label line is ``class cx cy w h`` normalised to [0, 1] (or a segment
    polygon ``class x1 y1 x2 y2 ...``, whose extent becomes the box); an image without a label
    file has no objects."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"YOLO data folder {root} does not exist")
    spec = _data_yaml(root)
    images_dir = _images_dir(root, spec, split)
    files = sorted(f for f in images_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = _names(root, spec)
    targets = [_yolo_target(_label_path(f), f) for f in files]
    n_classes = max([len(names)] + [int(t["labels"].max()) + 1 for t in targets if len(t["labels"])])
    names += [str(i) for i in range(len(names), n_classes)]
    return DetectionSet(list(files), targets, names, name=f"yolo:{root.name}/{split}",
                        ids=[f.stem for f in files])


def _data_yaml(root: Path) -> dict:
    from .._yaml import load_bounded

    for name in ("data.yaml", "dataset.yaml"):
        for folder in (root, root.parent):
            if (folder / name).is_file():
                try:
                    spec = load_bounded((folder / name).read_text())
                except ConfigError as exc:
                    raise DataError(f"{folder / name}: {exc}") from exc
                spec = spec if isinstance(spec, dict) else {}
                return {**spec, "_dir": folder}
    return {}


def _images_dir(root: Path, spec: dict, split: str) -> Path:
    if (root / "images").is_dir() and split not in spec:
        sub = root / "images" / split
        return sub if sub.is_dir() else root / "images"
    if split not in spec:
        raise DataError(f"{root}: no images/ folder and no '{split}:' entry in a data.yaml; "
                        f"expected images/ + labels/ or a data.yaml naming the {split} images")
    base = Path(spec.get("path") or spec["_dir"])
    base = base if base.is_absolute() else spec["_dir"] / base
    folder = Path(spec[split])
    folder = folder if folder.is_absolute() else base / folder
    if not folder.is_dir():
        raise DataError(f"data.yaml's {split}: {spec[split]} is {folder}, which is not a folder "
                        f"(lists of image files are not read)")
    return folder


def _names(root: Path, spec: dict) -> list[str]:
    names = spec.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    classes = root / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    return []


def _label_path(image: Path) -> Path:
    """Ultralytics' convention: the last ``images`` folder of the path becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_target(label: Path, image: Path) -> Target:
    if not label.is_file():
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    from PIL import Image

    with Image.open(image) as im:  # reads the header only: the size, not the pixels
        w, h = im.size
    boxes, labels = [], []
    for n, line in enumerate(label.read_text().splitlines(), 1):
        vals = line.split()
        if not vals:
            continue
        if len(vals) < 5 or len(vals) % 2 == 0:
            raise DataError(f"{label}:{n}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 "
                            f"...' for a polygon), got {line!r}")
        labels.append(int(float(vals[0])))
        boxes.append(_box(np.asarray(vals[1:], np.float32), w, h))
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64)}


def _box(v: np.ndarray, w: int, h: int) -> list[float]:
    if len(v) == 4:
        cx, cy, bw, bh = v
        x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    else:
        xs, ys = v[0::2], v[1::2]
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    return [float(x1 * w), float(y1 * h), float(x2 * w), float(y2 * h)]
