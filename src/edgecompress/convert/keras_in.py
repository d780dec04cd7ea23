"""``ec.from_keras``: a Keras 3 ``.keras``, legacy ``.h5`` or TensorFlow SavedModel as a torch
module, through tf2onnx then :func:`~edgecompress.convert.onnx_in.from_onnx`'s core.

TensorFlow runs only in a child process (:mod:`._tf_worker`): this process never loads its
native libraries, so torch's quantized kernels never share a process with TensorFlow's
(measured when they did: a torch.export after ``import tensorflow`` died with SIGSEGV loading
triton's native library, see :func:`_warn_if_tensorflow_loaded`). A Keras model object given
in-process is saved to a temporary ``.keras`` file for the child. The child also runs the Keras
model on the samples, so parity is measured against Keras itself, not an intermediate.

Keras image models take NHWC; the converted module takes NHWC too (the transpose to the
NCHW convolutions is the graph's first op, as tf2onnx wrote it), so every artifact takes what
the Keras model took, and the input signature says ``NHWC``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from .onnx_graph import ConversionError
from .onnx_in import Samples, convert_proto

log = logging.getLogger("edgecompress")

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TIMEOUT_S = 900


def is_keras_source(obj: Any) -> bool:
    """True for a Keras model object, a .keras/.h5 file or a SavedModel folder."""
    if type(obj).__module__.startswith(("keras", "tf_keras", "tensorflow")):
        return True
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        return p.suffix.lower() in KERAS_SUFFIXES or (p.is_dir() and (p / "saved_model.pb").exists())
    return False


def from_keras(model_or_path: Any, samples: Samples = None, *, logits: bool = False,
               tolerance: float = 1e-4, opset: int = 17, batchnorm: str = "fold") -> nn.Module:
    """Convert a Keras model (object, ``.keras``, ``.h5``) or a TensorFlow SavedModel folder to
    a torch module the pipeline accepts.

    Args:
        model_or_path: the model or its path.
        samples: inputs to measure parity on, as the Keras model takes them (NHWC images), one
            array per input; None: two seeded random inputs.
        logits: drop a final softmax so the module returns logits (for fine-tuning and
            distillation); parity is then measured after a softmax.
        tolerance: largest max |diff| vs Keras accepted (relative to the output magnitude, at
            least 1); beyond it ConversionError.
        opset: ONNX opset tf2onnx writes.
        batchnorm: ``"fold"`` (into the convolutions) or ``"keep"`` (trainable BatchNorm with
            statistics measured on ``samples``; for fine-tuning and distillation).

    Returns:
        a ``torch.fx.GraphModule`` whose ``edgecompress_source`` records the parity measured
        against Keras (``conversion_max_abs_diff``), the tools and the input layout.
    """
    with tempfile.TemporaryDirectory(prefix="ec-keras-") as tmp:
        work = Path(tmp)
        source = _source_path(model_or_path, work)
        inputs = _write_samples(samples, work)
        t0 = time.perf_counter()
        _run_worker(source, work, opset)
        seconds = time.perf_counter() - t0
        meta = json.loads((work / "meta.json").read_text())
        if inputs is None:  # the child drew them: read them back
            inputs = [np.load(work / f"input_{i}.npy") for i in range(len(meta["inputs"]))]
        refs = sorted(work.glob("reference_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
        reference = [np.load(p) for p in refs]
        import onnx

        proto = onnx.load(str(work / "model.onnx"))
    images = [s for s in meta["shapes"] if len(s) == 4]
    info = {"converted_from": meta["kind"], "source": str(model_or_path)[:200],
            "converter": f"tf2onnx {meta['tf2onnx']} (TensorFlow {meta['tensorflow']}, "
                         f"subprocess {seconds:.1f} s) + onnx2torch",
            "captured_constants_inlined": meta.get("captured_constants_inlined", [])}
    return convert_proto(proto, inputs, reference, info, logits=logits,
                         layout="NHWC" if images else None, tolerance=tolerance,
                         batchnorm=batchnorm)


def _warn_if_tensorflow_loaded() -> None:
    """A Keras model object means TensorFlow is loaded here already. Measured: a later
    torch.export (the TFLite exporter's first step) then dies with SIGSEGV while loading triton's
    native library, which bundles its own LLVM next to the one inside TensorFlow's."""
    if "tensorflow" in sys.modules:
        log.warning("TensorFlow is loaded in this process: exporting to TFLite (torch.export) "
                    "can crash it (SIGSEGV loading triton next to TensorFlow). Save the Keras "
                    "model (model.save('m.keras')) and run edgecompress in a process that never "
                    "imports TensorFlow: ec.from_keras('m.keras')")


def _source_path(model_or_path: Any, work: Path) -> Path:
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.exists():
            raise ConfigError(f"from_keras: {path} does not exist")
        if not is_keras_source(path):
            raise ConfigError(f"from_keras: {path} is not a .keras/.h5 file or a SavedModel "
                              f"folder (one holding saved_model.pb)")
        return path.resolve()
    if not hasattr(model_or_path, "save"):
        raise ConfigError(f"from_keras takes a Keras model or a path, got "
                          f"{type(model_or_path).__name__}")
    _warn_if_tensorflow_loaded()
    path = work / "model.keras"
    model_or_path.save(str(path))  # the child loads it: TF stays out of this process's work
    return path


def _write_samples(samples: Samples, work: Path) -> list[np.ndarray] | None:
    if samples is None:
        return None
    given = list(samples) if isinstance(samples, (list, tuple)) else [samples]
    arrays = [np.ascontiguousarray(g.detach().cpu().numpy() if hasattr(g, "detach") else g)
              for g in given]
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in arrays]
    for i, a in enumerate(arrays):
        np.save(work / f"input_{i}.npy", a)
    return arrays


def _run_worker(source: Path, work: Path, opset: int) -> None:
    cmd = [sys.executable, "-m", "edgecompress.convert._tf_worker", str(source), str(work),
           "--opset", str(opset)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                         env.get("PYTHONPATH", "")])
    log.info("converting %s with tf2onnx in a subprocess", source)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"the TensorFlow conversion of {source} took over {TIMEOUT_S} s") from exc
    if proc.returncode != 0 or not (work / "model.onnx").exists():
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("CONVERT-ERROR:")]
        reason = lines[-1].removeprefix("CONVERT-ERROR: ") if lines else \
            f"exit code {proc.returncode}: {proc.stderr.strip()[-800:]}"
        raise ConversionError(f"converting {source} failed: {reason}")
