"""Detection data: the generated set, COCO / YOLO folders, and the DataBundle they give."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import edgecompress as ec
from edgecompress.data import (DetectionSet, letterbox, load_coco_folder, load_yolo_folder,
                               synthetic_detection)
from edgecompress.errors import DataError


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)


def test_synthetic_detection_is_reproducible_per_seed():
    a, b = synthetic_detection(6, size=96, seed=3), synthetic_detection(6, size=96, seed=3)
    c = synthetic_detection(6, size=96, seed=4)
    assert all(np.array_equal(a.image(i), b.image(i)) for i in range(6))
    assert all(np.array_equal(a.targets[i]["boxes"], b.targets[i]["boxes"]) for i in range(6))
    assert not all(np.array_equal(a.image(i), c.image(i)) for i in range(6))


def test_synthetic_boxes_are_the_exact_extent_of_each_object():
    # one object per image on a known background: the pixels that differ lie exactly in the box
    data = synthetic_detection(8, size=64, seed=0, classes=("square",), max_objects=1,
                               scale=(0.3, 0.5))
    for i in range(len(data)):
        (x1, y1, x2, y2), = data.targets[i]["boxes"].astype(int)
        img = data.image(i).astype(int)
        inside = img[y1:y2, x1:x2]
        # a square fills its box: every box pixel has the object's colour family (low spread)
        assert inside.std(axis=(0, 1)).max() < 12
        assert data.targets[i]["labels"].tolist() == [0]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64


def test_synthetic_digits_and_shapes_are_classes():
    data = synthetic_detection(10, size=128, seed=1, classes=("circle", "digit3", "digit7"))
    labels = np.concatenate([t["labels"] for t in data.targets])
    assert set(labels.tolist()) <= {0, 1, 2} and len(labels) >= 10
    assert data.class_names == ["circle", "digit3", "digit7"]
    with pytest.raises(ec.ConfigError, match="unknown class 'hexagon'"):
        synthetic_detection(2, classes=("hexagon",))


def test_coco_folder_loads_exact_boxes(tmp_path):
    _write_images(tmp_path / "img", {"a.jpg": (64, 48), "b.png": (40, 40)})
    doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                      {"id": 9, "file_name": "b.png", "width": 40, "height": 40}],
           "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0},
               {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0.5, 1.5, 4, 2], "iscrowd": 0},
               {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 9, 9], "iscrowd": 1}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    data = load_coco_folder(tmp_path / "img", tmp_path / "instances.json")
    assert data.class_names == ["car", "dog"]  # category ids in increasing order: 3, 18
    assert data.ids == [7, 9]
    np.testing.assert_array_equal(data.targets[0]["boxes"], [[10, 5, 30, 35], [0.5, 1.5, 4.5, 3.5]])
    assert data.targets[0]["labels"].tolist() == [1, 0]
    assert data.targets[1]["boxes"].shape == (0, 4)
    assert data.image(0).shape == (48, 64, 3)


def test_coco_folder_names_a_missing_image(tmp_path):
    (tmp_path / "img").mkdir()
    doc = {"images": [{"id": 1, "file_name": "gone.jpg"}], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="gone.jpg, which does not exist"):
        load_coco_folder(tmp_path / "img", tmp_path / "ann.json")


def test_yolo_folder_with_data_yaml_loads_exact_boxes(tmp_path):
    _write_images(tmp_path / "images" / "val", {"p.jpg": (100, 50), "q.jpg": (20, 20)})
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "p.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.3 0.2 0.2 0.6\n")  # a box and a triangle polygon
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                        "names:\n  0: cat\n  1: bird\n")
    data = load_yolo_folder(tmp_path, split="val")
    assert data.class_names == ["cat", "bird"] and data.ids == ["p", "q"]
    np.testing.assert_allclose(data.targets[0]["boxes"], [[40, 15, 60, 35], [10, 10, 30, 30]],
                               atol=1e-4)
    assert data.targets[0]["labels"].tolist() == [1, 0]
    assert len(data.targets[1]["labels"]) == 0  # no label file: a background image


def test_yolo_folder_refuses_a_malformed_line(tmp_path):
    _write_images(tmp_path / "images", {"p.jpg": (10, 10)})
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "p.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(DataError, match=r"p.txt:1: expected 'class cx cy w h'"):
        load_yolo_folder(tmp_path)


def test_letterbox_maps_boxes_into_input_pixels():
    img = np.zeros((50, 100, 3), np.uint8)
    out, scale, (left, top) = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and scale == pytest.approx(0.64)
    assert (left, top) == (0, 16) and out[0, 0, 0] == 114 and out[32, 32, 0] == 0
    data = DetectionSet([img], [{"boxes": np.array([[10, 10, 60, 40]], np.float32),
                                 "labels": np.array([0])}], ["a"])
    bundle = data.bundle(size=64, val=data, batch_size=1)
    x, y = next(iter(bundle.val))
    assert x.shape == (1, 3, 64, 64) and x.dtype.__str__() == "torch.float32"
    np.testing.assert_allclose(y[0]["boxes"], [[6.4, 22.4, 38.4, 41.6]], rtol=1e-5)


def test_bundle_splits_and_batches_targets():
    bundle = synthetic_detection(10, size=64, seed=0).bundle(size=64, batch_size=4, seed=0)
    assert bundle.num_classes == 4 and bundle.class_names[0] == "circle"
    xs = [(x, y) for x, y in bundle.train]
    assert sum(len(y) for _, y in xs) == 8 and all(isinstance(y, list) for _, y in xs)
    assert sum(len(y) for _, y in bundle.val) == 2
    assert bundle.example_input.shape == (1, 3, 64, 64)
