"""The one table of export formats.

Each row names a format's file suffix (or folder), the pip extra it needs, what precisions it
can hold, and the exporter and runner classes (imported lazily, so heavy optional packages load
only when that format is used). The exporters, the runners, :func:`edgecompress.load`, the CLI and
the docs all read this table. The rows are registered into :data:`edgecompress.registry.formats`
(a leaf), where every lookup reads them, so the layers below the exporters never import this
module; a plugin adds a row with :func:`register_format` or the ``edgecompress.exporters`` /
``edgecompress.runners`` entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import registry
from .registry import FormatSpec


def _has_ncnn_param(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.param"))


def _has_openvino_ir(path: Path) -> bool:
    return path.is_dir() and any(x.with_suffix(".bin").exists() for x in path.glob("*.xml"))


FORMATS = registry.formats  # name -> FormatSpec


def register_format(spec: FormatSpec, replace: bool = False) -> FormatSpec:
    """Add a format to the table (plugins call this, or use entry points)."""
    return FORMATS.register(spec.name, spec, replace=replace)


for _spec in (
    FormatSpec("onnx", (".onnx",), "ONNX, run by ONNX Runtime; INT8 as a QDQ graph from ORT's quantizer",
               "edgecompress.export.onnx:OnnxExporter", "edgecompress.runtime.ort:OrtRunner",
               modules=("onnx", "onnxruntime"), fp16=True, int8_static=True, int8_dynamic=True,
               dynamic_batch=True),
    FormatSpec("tflite", (".tflite",), "LiteRT (TensorFlow Lite) flatbuffer via litert-torch",
               "edgecompress.export.tflite:TfliteExporter", "edgecompress.runtime.litert:LiteRTRunner",
               extra="tflite", modules=("litert_torch", "ai_edge_litert"), fp16=True,
               int8_static=True, int8_dynamic=True),
    FormatSpec("torchscript", (".ptl",), "TorchScript for the PyTorch lite interpreter (mobile)",
               "edgecompress.export.torchscript:TorchScriptExporter",
               "edgecompress.runtime.torchscript:LiteInterpreterRunner",
               modules=("torch",), int8_static=True, int8_dynamic=True, dynamic_batch=True),
    FormatSpec("ncnn", (), "ncnn .param + .bin folder converted by pnnx",
               "edgecompress.export.ncnn:NcnnExporter", "edgecompress.runtime.ncnn_runner:NcnnRunner",
               extra="ncnn", modules=("pnnx", "ncnn"), directory=True, fp16=True,
               detect=_has_ncnn_param),
    FormatSpec("tensorrt", (".engine", ".plan"), "TensorRT engine built from ONNX (NVIDIA GPUs, Jetson)",
               "edgecompress.export.tensorrt:TensorRTExporter",
               "edgecompress.runtime.tensorrt_runner:TensorRTRunner",
               extra="tensorrt", modules=("tensorrt",), fp16=True, int8_static=True,
               dynamic_batch=True, needs_gpu=True),
    FormatSpec("openvino", (".xml",), "OpenVINO IR folder (model.xml + model.bin); INT8 from the "
               "recipe's QDQ graph or NNCF, run by OpenVINO's CPU plugin",
               "edgecompress.export.openvino:OpenVinoExporter",
               "edgecompress.runtime.openvino_runner:OpenVinoRunner",
               extra="openvino", modules=("openvino",), directory=True, fp16=True,
               int8_static=True, dynamic_batch=True, detect=_has_openvino_ir),
    FormatSpec("executorch", (".pte",), "ExecuTorch program lowered to the XNNPACK delegate; INT8 "
               "through PT2E with the XNNPACK quantizer",
               "edgecompress.export.executorch:ExecuTorchExporter",
               "edgecompress.runtime.executorch_runner:ExecuTorchRunner",
               extra="executorch", modules=("executorch",), int8_static=True),
    FormatSpec("torch", (".ecm",), "edgecompress DeployableModel (weights + structure, no pickled code)",
               "edgecompress.export.ecm:EcmExporter", "edgecompress.runtime.torch_runner:TorchRunner",
               modules=("torch",), int8_static=True, int8_dynamic=True, dynamic_batch=True),
    FormatSpec("gguf", (".gguf",), "GGUF for llama.cpp: causal LMs (Llama, Qwen2, GPT-2) with "
               "their tokenizer, F16 / Q8_0 / Q4_0 / Q4_1 / Q4_K weights",
               "edgecompress.export.gguf:GgufExporter", "edgecompress.runtime.llama_runner:LlamaRunner",
               extra="llm", modules=("gguf",), fp16=True, weight_only=True, dynamic_batch=True),
):
    register_format(_spec)


def get_format(name: str) -> FormatSpec:
    """The row for ``name``, or a ConfigError listing the known formats."""
    return FORMATS.spec(name)


def format_for_path(path: str | Path) -> FormatSpec:
    """Find the format of an artifact from its suffix (or, for folders, its contents)."""
    return FORMATS.for_path(path)


def format_table() -> list[dict[str, Any]]:
    """The table as rows of plain data (CLI ``formats`` and the docs print it)."""
    return [spec.row() for spec in FORMATS.values()]


__all__ = ["FORMATS", "FormatSpec", "format_for_path", "format_table", "get_format", "register_format"]
