"""What the ONNX and TensorRT exporters share of ONNX Runtime's quantizer.

One calibration reader over in-memory samples (one input or several named ones), one map from
our calibration method names to ORT's, and ORT's list of ops that keep their input's scale.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np

#: calibration samples for ORT: one input's array, or every named input's (a model with several)
Samples = Union[np.ndarray, Mapping[str, np.ndarray]]

# ops whose output ORT quantizes with its input's scale and zero point, in QDQ and QOperator
# alike: a range written for their output is ignored (measured: a Flatten after a global pool
# kept the pool's calibrated scale), so it goes on their input. quant/sharing.py mirrors this
# list in torch terms so the simulated model shares the same quantizers.
SAME_SCALE_OPS = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool"})


def as_feeds(samples: Samples, input_name: str | None = None) -> dict[str, np.ndarray]:
    """``{input name: array}`` for ORT: ``samples`` itself when it names every input, else the
    one input's array under ``input_name``."""
    if isinstance(samples, Mapping):
        return dict(samples)
    return {str(input_name): samples}


def sample_count(samples: Samples) -> int:
    """How many samples ``samples`` holds (every input has them along dimension 0)."""
    return len(next(iter(as_feeds(samples).values())))


class CalibrationReader:
    """ORT's ``CalibrationDataReader`` protocol over calibration samples, in batches; every
    named input of a model with several is sliced alike."""

    def __init__(self, samples: Samples, input_name: str | None = None, batch_size: int = 32):
        feeds = as_feeds(samples, input_name)
        n = sample_count(feeds)
        self.batches = [{k: v[i:i + batch_size] for k, v in feeds.items()}
                        for i in range(0, n, batch_size)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return self.batches[self.index - 1]

    def rewind(self) -> None:
        self.index = 0


def calibration_method(name: str) -> Any:
    """ORT's ``CalibrationMethod`` for ``minmax`` / ``percentile`` / ``entropy``."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]
