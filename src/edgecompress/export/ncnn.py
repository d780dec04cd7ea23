"""ncnn exporter: torch → TorchScript trace → pnnx → ``model.param`` + ``model.bin`` in a folder.

pnnx (Tencent's PyTorch → ncnn converter, shipped as the ``pnnx`` pip package) is run as its
command-line binary with explicit output paths, so its side files (the pnnx IR, a generated
Python module, a pnnx ONNX) land in a scratch folder and never in the artifact, and its exit
status and output are checked instead of importing the Python module it generates. The
artifact folder holds only what :class:`~edgecompress.runtime.ncnn_runner.NcnnRunner` needs::

    model_ncnn/
        model.param        # graph (text)
        model.bin          # weights (fp32, or fp16 with fp16=True)
        edgecompress.json  # metadata + sha256 of model.param and model.bin
        pnnx/              # only with keep_pnnx_files=True (debugging)

INT8 recipes are refused by the base class (the format row has no INT8): ncnn's INT8 path
needs its own calibration table and the ``ncnn2int8`` tool, which the Python package lacks.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._extras import require
from ..errors import ExportError
from ..metadata import write_sidecar
from ..options import option
from ..job import ExportJob
from .base import Exporter, ExportOptions
from .flat import job_graph_model

log = logging.getLogger("edgecompress")

PARAM_FILE = "model.param"
BIN_FILE = "model.bin"
PNNX_TIMEOUT_S = 600


@dataclass
class NcnnOptions(ExportOptions):
    fp16: bool = option(False, "Store the weights as fp16 in model.bin; the runner then enables "
                               "ncnn's fp16 storage/arithmetic where the CPU supports it.")
    optlevel: int = option(2, "The pnnx graph optimisation level (0: none, 2: fuse and fold).",
                           choices=(0, 1, 2))
    keep_pnnx_files: bool = option(False, "Keep pnnx's intermediate files (TorchScript trace, "
                                          "pnnx IR, generated .py) in a pnnx/ subfolder.")


def pnnx_executable() -> Path:
    """Path of the pnnx converter binary inside the installed ``pnnx`` package."""
    pnnx = require("pnnx", "ncnn", "Exporting to ncnn")
    exe = Path(pnnx.EXEC_PATH)
    if not exe.exists():
        raise ExportError(f"the pnnx package is installed but its converter binary {exe} is "
                          f"missing; reinstall it with: pip install --force-reinstall pnnx")
    return exe


def trace_to_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``model`` (on CPU) to a TorchScript file pnnx can read."""
    model = copy.deepcopy(model).cpu().eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
            torch.jit.trace(model, example.cpu(), check_trace=False).save(str(path))
    except Exception as exc:
        raise ExportError(f"torch.jit.trace could not trace {type(model).__name__} for pnnx: "
                          f"{str(exc)[:500]}. ncnn export needs a traceable model (no "
                          f"data-dependent Python control flow); export to ONNX instead") from exc


def run_pnnx(torchscript: Path, shape: tuple[int, ...], out_dir: Path, work: Path, fp16: bool,
             optlevel: int) -> None:
    """Convert ``torchscript`` with the pnnx binary; ncnn files go to ``out_dir``."""
    # pnnx runs in ``work``: a relative output path would land (or fail to open) under it
    torchscript, out_dir, work = torchscript.absolute(), out_dir.absolute(), work.absolute()
    cmd = [str(pnnx_executable()), str(torchscript),
           "inputshape=[" + ",".join(str(d) for d in shape) + "]f32", "device=cpu",
           f"optlevel={optlevel}", f"fp16={int(fp16)}",
           f"ncnnparam={out_dir / PARAM_FILE}", f"ncnnbin={out_dir / BIN_FILE}",
           f"ncnnpy={work / 'model_ncnn.py'}", f"pnnxparam={work / 'model.pnnx.param'}",
           f"pnnxbin={work / 'model.pnnx.bin'}", f"pnnxpy={work / 'model_pnnx.py'}",
           f"pnnxonnx={work / 'model.pnnx.onnx'}"]
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                              timeout=PNNX_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"pnnx did not finish within {PNNX_TIMEOUT_S} s") from exc
    made = (out_dir / PARAM_FILE).exists() and (out_dir / BIN_FILE).exists()
    if proc.returncode != 0 or not made:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ExportError(f"pnnx failed to convert the model (exit code {proc.returncode}, "
                          f"ncnn files written: {made}). Last output:\n{tail}")


def check_loadable(param: Path, bin_path: Path) -> tuple[list[str], list[str]]:
    """Load the converted files with ncnn; return (input blob names, output blob names).

    pnnx writes operators ncnn has no layer for as they are, so an unsupported op shows up here
    as a load failure rather than at inference time.
    """
    ncnn = require("ncnn", "ncnn", "Checking an ncnn export")
    net = ncnn.Net()
    try:
        if net.load_param(str(param)) != 0:
            kinds = sorted({line.split()[0] for line in param.read_text().splitlines()[2:]
                            if line.split() and ("." in line.split()[0])})
            raise ExportError(f"ncnn cannot load the graph pnnx produced ({param.name}). "
                              + (f"Operators ncnn has no layer for: {', '.join(kinds)}. "
                                 if kinds else "")
                              + "Replace them in the model or export to ONNX/TFLite instead")
        if net.load_model(str(bin_path)) != 0:
            raise ExportError(f"ncnn cannot load the weights pnnx produced ({bin_path.name})")
        return list(net.input_names()), list(net.output_names())
    finally:
        net.clear()


class NcnnExporter(Exporter):
    """Writes ncnn folders (``model.param`` + ``model.bin``); options in :class:`NcnnOptions`."""

    Options = NcnnOptions

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        names = job.signature.output_names
        if len(names) != 1:
            raise ExportError(f"{type(job.source).__name__} gives {len(names)} outputs "
                              f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) and "
                              f"the ncnn exporter writes single-output models; export to one of "
                              f"onnx, tflite, torchscript (they keep every named output)")
        # a single output inside a dict / tuple / ModelOutput (torchvision's {"out": ...}) is
        # traced as the flat tuple every graph format converts
        model, (example,) = job_graph_model(job)
        tmp.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="ec_pnnx_") as scratch:
            work = Path(scratch)
            trace_to_torchscript(model, example, work / "model.pt")
            run_pnnx(work / "model.pt", tuple(example.shape), tmp, work, opts.fp16, opts.optlevel)
            if opts.keep_pnnx_files:
                shutil.copytree(work, tmp / "pnnx")
        inputs, outputs = check_loadable(tmp / PARAM_FILE, tmp / BIN_FILE)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(f"the ncnn graph has inputs {inputs} and outputs {outputs}; "
                              f"edgecompress runs single-input, single-output models")
        with torch.no_grad():
            out = copy.deepcopy(model).cpu().eval()(example)
        out_shape = list((out[0] if isinstance(out, tuple) else out).shape)
        import ncnn
        import pnnx

        return {"converter": "pnnx", "pnnx_version": getattr(pnnx, "__version__", None),
                "ncnn_version": getattr(ncnn, "__version__", None), "ncnn_param": PARAM_FILE,
                "ncnn_bin": BIN_FILE, "ncnn_input": inputs[0], "ncnn_output": outputs[0],
                "output_shape": out_shape, "weights_dtype": "float16" if opts.fp16 else "float32",
                "pnnx_files_kept": bool(opts.keep_pnnx_files)}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, metadata, [path / PARAM_FILE, path / BIN_FILE])
