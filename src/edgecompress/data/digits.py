"""scikit-learn's bundled 8×8 digits: the offline default data set (no download)."""

from __future__ import annotations

import numpy as np

from .bundle import DataBundle
from .tensors import bundle_from_arrays


def digits(image_size: int = 32, batch_size: int = 64, seed: int = 0, channels: int = 1,
           val_fraction: float = 0.2, calib_size: int = 256, layout: str = "NCHW") -> DataBundle:
    """The 1,797 scikit-learn digits, upscaled to ``image_size`` and split with ``seed``.

    The split is fixed for a given seed (1,438 train / 359 val by default). Pixels (0–16) are
    scaled to [0, 1] and normalised with the training split's mean and std; ``layout="NHWC"``
    gives channels-last batches (for models converted from Keras).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (N, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return bundle_from_arrays(images[train_idx], labels[train_idx], images[val_idx],
                              labels[val_idx], name="digits", image_size=image_size,
                              channels=channels, batch_size=batch_size, calib_size=calib_size,
                              seed=seed, scale=1 / 16,
                              class_names=[str(i) for i in range(10)], layout=layout)
