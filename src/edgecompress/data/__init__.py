"""Data: the :class:`DataBundle` contract and loaders for bundled and on-disk data sets."""

from .augment import RandomShiftFlip
from .bundle import DataBundle, Preprocess, check_inputs, iter_batches, split_batch
from .digits import digits
from .idx import idx, read_idx
from .images import image_folder
from .tensors import bundle_from_arrays
from .text import TextBundle, text

__all__ = ["DataBundle", "Preprocess", "RandomShiftFlip", "bundle_from_arrays", "check_inputs", "digits", "idx",
           "image_folder", "iter_batches", "read_idx", "split_batch", "text", "TextBundle"]
