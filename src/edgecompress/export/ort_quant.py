"""What the ONNX and TensorRT exporters share of ONNX Runtime's quantizer.

One calibration reader over in-memory samples, one map from our calibration method names to
ORT's, and ORT's list of ops that keep their input's scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ops whose output ORT quantizes with its input's scale and zero point, in QDQ and QOperator
# alike: a range written for their output is ignored (measured: a Flatten after a global pool
# kept the pool's calibrated scale), so it goes on their input. quant/sharing.py mirrors this
# list in torch terms so the simulated model shares the same quantizers.
# (a Pad here is the zero padding of torch's exports: ORT's QDQPad shares its input's scale then)
SAME_SCALE_OPS = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool",
                            "Pad"})


class CalibrationReader:
    """ORT's ``CalibrationDataReader`` protocol over calibration samples, in batches."""

    def __init__(self, samples: np.ndarray, input_name: str, batch_size: int = 32):
        self.batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
        self.input_name = input_name
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {self.input_name: self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def calibration_method(name: str) -> Any:
    """ORT's ``CalibrationMethod`` for ``minmax`` / ``percentile`` / ``entropy``."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]
