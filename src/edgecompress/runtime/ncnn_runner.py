"""ncnn runner: a folder with ``<name>.param`` + ``<name>.bin`` run by the ``ncnn`` package.

ncnn runs one sample at a time on (C, H, W) blobs, so the input spec reports a fixed batch of 1
and :class:`~edgecompress.runtime.base.Runner` loops over larger batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ArtifactError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec


def find_model_files(folder: Path, metadata: dict[str, Any]) -> tuple[Path, Path]:
    """The ``.param`` and matching ``.bin`` of an ncnn folder, or a clear ArtifactError."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; an ncnn artifact is a folder holding "
                            f"<name>.param and <name>.bin")
    if metadata.get("ncnn_param"):
        param = folder / metadata["ncnn_param"]
    else:
        params = sorted(folder.glob("*.param"))
        if len(params) != 1:
            raise ArtifactError(f"{folder} holds {len(params)} .param files "
                                f"({', '.join(p.name for p in params) or 'none'}); an ncnn "
                                f"artifact folder holds exactly one")
        param = params[0]
    bin_path = folder / metadata["ncnn_bin"] if metadata.get("ncnn_bin") else param.with_suffix(".bin")
    if not param.exists():
        raise ArtifactError(f"{folder}: graph file {param.name} is missing")
    if not bin_path.exists():
        raise ArtifactError(f"{folder}: found the graph {param.name} but not its weights "
                            f"{bin_path.name}; copy the .bin written with it into the folder "
                            f"(ncnn needs both files)")
    return param, bin_path


class NcnnRunner(Runner):
    """Runs ncnn folders with the ``ncnn`` Python package (CPU).

    Options: ``threads`` (``opt.num_threads``; None: ncnn's default, all cores), ``fp16``
    (None: on for fp16 artifacts, off for fp32 ones so fp32 results stay fp32; True/False to
    force ncnn's fp16 storage, packing and arithmetic).
    """

    format = "ncnn"

    def _load(self) -> None:
        self._ncnn = require("ncnn", "ncnn", "Running an ncnn model")
        self.metadata = self.metadata or read_sidecar(self.path)
        self.param_path, self.bin_path = find_model_files(self.path, self.metadata)
        self.net = self._ncnn.Net()
        self._configure(self.net.opt)
        if self.net.load_param(str(self.param_path)) != 0:
            raise ArtifactError(f"ncnn cannot parse {self.param_path} (not an ncnn .param file, "
                                f"truncated, or it uses a layer this ncnn build lacks)")
        if self.net.load_model(str(self.bin_path)) != 0:
            raise ArtifactError(f"ncnn cannot read the weights {self.bin_path}: the file is "
                                f"truncated or does not belong to {self.param_path.name}")
        names_in, names_out = list(self.net.input_names()), list(self.net.output_names())
        self._input = self.metadata.get("ncnn_input") or (names_in[0] if names_in else None)
        self._output = self.metadata.get("ncnn_output") or (names_out[0] if names_out else None)
        if self._input not in names_in or self._output not in names_out:
            raise ArtifactError(f"{self.param_path}: expected input blob {self._input!r} and "
                                f"output blob {self._output!r}; the graph has inputs "
                                f"{names_in} and outputs {names_out}")
        in_shape = (self.metadata.get("input") or {}).get("shape")
        self.inputs = [TensorSpec(self._input, (1, *in_shape[1:]) if in_shape else
                                  (1, None, None, None), "float32")]
        out_shape = self.metadata.get("output_shape")
        self._out_shape = (1, *out_shape[1:]) if out_shape else None
        self.outputs = [TensorSpec(self._output, self._out_shape or (1, None), "float32")]

    def _configure(self, opt: Any) -> None:
        fp16 = self.options.get("fp16")
        if fp16 is None:
            fp16 = self.metadata.get("precision") == "fp16"
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = bool(fp16)
        opt.use_vulkan_compute = False
        if self.threads:
            opt.num_threads = int(self.threads)
        self.fp16 = bool(fp16)

    def _run(self, x: np.ndarray) -> np.ndarray:
        sample = np.ascontiguousarray(x[0], dtype=np.float32)
        # ncnn.Mat(array) wraps the array's memory without copying: ``sample`` must stay
        # referenced until extract() has returned.
        with self.net.create_extractor() as ex:
            ex.input(self._input, self._ncnn.Mat(sample))
            ret, mat = ex.extract(self._output)
            if ret != 0:
                raise ArtifactError(f"ncnn failed to compute {self._output!r} (code {ret})")
            out = np.array(mat, dtype=np.float32, copy=True)
        del sample
        if self._out_shape is not None and out.size == int(np.prod(self._out_shape)):
            return out.reshape(self._out_shape)
        return out[None]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "fp16": self.fp16, "param": self.param_path.name,
                "bin": self.bin_path.name}

    def close(self) -> None:
        net = getattr(self, "net", None)
        if net is not None:
            net.clear()
