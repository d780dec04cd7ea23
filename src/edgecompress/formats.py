"""The one table of export formats.

Each row names a format's file suffix (or folder), the pip extra it needs, what precisions it
can hold, and the exporter and runner classes (imported lazily, so heavy optional packages load
only when that format is used). The exporters, the runners, :func:`edgecompress.load`, the CLI and
the docs all read this table; a plugin adds a row with :func:`register_format` or the
``edgecompress.exporters`` / ``edgecompress.runners`` entry points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._extras import available
from .errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class FormatSpec:
    """One export format."""

    name: str
    suffixes: tuple[str, ...]
    description: str
    exporter: str  # "module:Class" of the Exporter
    runner: str  # "module:Class" of the Runner
    extra: str | None = None  # pip extra that installs what it needs
    modules: tuple[str, ...] = ()  # Python modules needed to export and run it
    directory: bool = False  # the artifact is a folder
    fp32: bool = True
    fp16: bool = False
    int8_static: bool = False
    int8_dynamic: bool = False
    weight_only: bool = False  # holds group-wise int4/int8 weights with float activations
    dynamic_batch: bool = False
    needs_gpu: bool = False
    detect: Callable[[Path], bool] | None = field(default=None, compare=False)

    def available(self) -> bool:
        """True when the Python modules it needs can be imported here."""
        return all(available(m) for m in self.modules)

    def supports(self, precision: str) -> bool:
        """Whether this format can hold ``precision`` ('fp32', 'fp16', 'int8-static', 'int8-dynamic')."""
        if precision.endswith("-weight"):
            return self.weight_only
        return {"fp32": self.fp32, "fp16": self.fp16, "int8": self.int8_static,
                "int8-static": self.int8_static, "int8-dynamic": self.int8_dynamic}.get(precision, False)

    def row(self) -> dict[str, Any]:
        """The format as one row of plain data (``edgecompress formats``, the docs)."""
        return {"format": self.name, "suffix": "/".join(self.suffixes) + ("/ (folder)" if self.directory else ""),
                "extra": self.extra or "(core)", "fp16": self.fp16, "int8 static": self.int8_static,
                "int8 dynamic": self.int8_dynamic, "dynamic batch": self.dynamic_batch,
                "available": self.available(), "description": self.description}


def _has_ncnn_param(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.param"))


def _has_openvino_ir(path: Path) -> bool:
    return path.is_dir() and any(x.with_suffix(".bin").exists() for x in path.glob("*.xml"))


FORMATS: dict[str, FormatSpec] = {}


def register_format(spec: FormatSpec, replace: bool = False) -> FormatSpec:
    """Add a format to the table (plugins call this, or use entry points)."""
    if spec.name in FORMATS and not replace:
        raise ConfigError(f"format '{spec.name}' is already registered; pass replace=True")
    FORMATS[spec.name] = spec
    return spec


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
    from .plugins import load_plugins

    load_plugins()
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown export format '{name}'. Known formats: "
                          f"{', '.join(sorted(FORMATS))}") from None


def format_for_path(path: str | Path) -> FormatSpec:
    """Find the format of an artifact from its suffix (or, for folders, its contents)."""
    from .plugins import load_plugins

    load_plugins()
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact {p} does not exist")
    if p.is_dir() and (p / "build_engine.sh").exists():
        raise ArtifactError(f"{p} is a TensorRT build bundle, not an engine: copy it to the "
                            f"device, run build_engine.sh there, then load the .engine file")
    for spec in FORMATS.values():
        if spec.directory and spec.detect is not None and spec.detect(p):
            return spec
        if not p.is_dir() and p.suffix.lower() in spec.suffixes:
            return spec
    known = ", ".join(f"{s.name} ({'/'.join(s.suffixes) or 'folder'})" for s in FORMATS.values())
    raise ArtifactError(f"cannot tell the format of {p} from its suffix '{p.suffix}'. "
                        f"Known formats: {known}")


def format_table() -> list[dict[str, Any]]:
    """The table as rows of plain data (CLI ``formats`` and the docs print it)."""
    from .plugins import load_plugins

    load_plugins()
    return [spec.row() for spec in FORMATS.values()]
