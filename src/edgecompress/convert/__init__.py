"""Models not written in PyTorch, in: ONNX files (:func:`from_onnx`) and Keras / TensorFlow
models (:func:`from_keras`), each returned as a torch module the whole pipeline accepts, with
its parity to the original measured."""

from __future__ import annotations

from .keras_in import from_keras, is_keras_source
from .layout import to_nchw
from .onnx_graph import ConversionError
from .onnx_in import from_onnx
from .source import SOURCE_ATTR, source_of

__all__ = ["ConversionError", "SOURCE_ATTR", "from_keras", "from_onnx", "is_keras_source",
           "source_of", "to_nchw"]
