"""The forms a model takes as it flows through a pipeline.

Each pass declares which forms it accepts and which it gives, so a pipeline can check the whole
chain before running anything (see :meth:`edgecompress.Pipeline.check`).
"""

from __future__ import annotations

import enum


class Form(str, enum.Enum):
    """A model's form between passes."""

    TORCH_FLOAT = "torch-float"
    """A float ``torch.nn.Module`` (trainable, prunable, fusable)."""

    TORCH_FAKEQUANT = "torch-fakequant"
    """A torch module that simulates INT8 (fake-quantized); carries a quantization recipe."""

    ONNX_GRAPH = "onnx-graph"
    """An ``onnx.ModelProto``: graph-level passes work on it; no more torch training."""

    def __str__(self) -> str:
        return self.value
