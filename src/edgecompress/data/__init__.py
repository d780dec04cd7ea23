"""Data: the :class:`DataBundle` contract and loaders for bundled and on-disk data sets."""

from .augment import RandomShiftFlip
from .bundle import DataBundle, Preprocess, check_inputs, iter_batches, split_batch
from .detection import DetectionSet, letterbox
from .detection_folders import load_coco_folder, load_yolo_folder
from .digits import digits
from .idx import idx, read_idx
from .images import image_folder
from .synthetic_detection import synthetic_detection
from .tensors import bundle_from_arrays
from .text import TextBundle, text

__all__ = ["DataBundle", "DetectionSet", "Preprocess", "RandomShiftFlip", "bundle_from_arrays",
           "check_inputs", "digits", "idx", "image_folder", "iter_batches", "letterbox",
           "load_coco_folder", "load_yolo_folder", "read_idx", "split_batch",
           "synthetic_detection", "text", "TextBundle"]
