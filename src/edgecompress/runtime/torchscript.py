"""Runner for ``.ptl`` files on PyTorch's lite interpreter (what mobile apps embed)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np

from ..errors import ArtifactError
from ..metadata import read_sidecar
from .base import Runner, TensorSpec, recorded_names


class LiteInterpreterRunner(Runner):
    """Runs ``.ptl`` files with ``torch.jit.mobile._load_for_lite_interpreter``.

    Options: ``threads`` (``torch.set_num_threads``, process-wide), ``engine`` (quantized
    engine; default: the one the file was exported for, from its metadata). INT8 files hold
    weights packed for one engine; it is selected while loading and running, and torch's
    process-wide setting is restored afterwards.
    """

    format = "torchscript"

    def _load(self) -> None:
        import torch
        from torch.jit.mobile import _load_for_lite_interpreter

        with open(self.path, "rb") as fh:
            head = fh.read(4)
        if head[:2] != b"PK":  # .ptl files are zip archives
            raise ArtifactError(f"{self.path} is not a TorchScript lite-interpreter file (not a "
                                f"zip archive; empty, truncated or another file type). "
                                f"Re-export it with dm.export('torchscript', ...)")
        self.metadata = self.metadata or read_sidecar(self.path)
        self.engine = self.options.get("engine") or self.metadata.get("quant_engine")
        if self.engine:
            supported = torch.backends.quantized.supported_engines
            if self.engine not in supported:
                raise ArtifactError(f"{self.path} holds INT8 weights for the '{self.engine}' "
                                    f"engine, which this torch lacks (it has "
                                    f"{', '.join(supported)}); re-export with engine= one of "
                                    f"those")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            with warnings.catch_warnings(), self._engine():
                warnings.simplefilter("ignore")  # the lite interpreter's deprecation notice
                self.module = _load_for_lite_interpreter(str(self.path))
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"the lite interpreter cannot load {self.path} (truncated or "
                                f"corrupt .ptl?): {str(exc).splitlines()[0][:300]}") from exc
        self._torch = torch
        self._specs()

    def _specs(self) -> None:
        sig = self.metadata.get("signature")
        if isinstance(sig, dict) and sig.get("inputs"):
            self.inputs = [_recorded_input(t, self.path) for t in sig["inputs"]]
        else:
            shape = (self.metadata.get("input") or {}).get("shape")
            if not shape:
                return  # no metadata: inputs are passed through unchecked
            self.inputs = [TensorSpec("input", (None, *shape[1:]), "float32")]
        probe = {s.name: np.zeros((1, *[d or 1 for d in s.shape[1:]]), dtype=s.dtype)
                 for s in self.inputs}
        outs = self._outputs(probe)
        names = recorded_names(self.metadata, "outputs")
        names = names if names and len(names) == len(outs) else [n for n, _ in outs]
        self.outputs = [TensorSpec(n, (None, *o.shape[1:]), str(o.dtype))
                        for n, (_, o) in zip(names, outs)]

    @contextlib.contextmanager
    def _engine(self) -> Iterator[None]:
        import torch

        before = torch.backends.quantized.engine
        if self.engine and before != self.engine:
            torch.backends.quantized.engine = self.engine
        try:
            yield
        finally:
            if torch.backends.quantized.engine != before:
                torch.backends.quantized.engine = before

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._outputs({"input": x})[0][1]

    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._outputs(feeds)
        names = [s.name for s in self.outputs] if len(self.outputs) == len(outs) else \
            [n for n, _ in outs]
        return {n: o for n, (_, o) in zip(names, outs)}

    def _outputs(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The module's outputs for positional inputs, flattened by ``flatten_outputs``."""
        from ..signature import flatten_outputs

        with self._torch.no_grad(), self._engine():
            out: Any = self.module(*[self._torch.from_numpy(v) for v in feeds.values()])
        return [(n, t.detach().float().numpy() if t.is_floating_point() else t.numpy())
                for n, t in flatten_outputs(out)]


def _recorded_input(t: Any, path: Any) -> TensorSpec:
    """One input of the recorded signature, refusing what no real model takes (a crafted
    shape would make the probe allocate terabytes; a crafted dtype is no numpy type)."""
    from ..metadata import check_input_shape
    from ..signature import INPUT_DTYPES

    shape = t.get("shape") if isinstance(t, dict) else None
    ok = isinstance(shape, list) and len(shape) >= 1 and str(t.get("dtype")) in INPUT_DTYPES
    if not ok or str(t.get("dtype")) == "bfloat16":
        raise ArtifactError(f"{path}: recorded input {t!r} is not a usable input (name, shape, "
                            f"dtype); the metadata is corrupt or crafted")
    check_input_shape({"shape": [1, *shape[1:]]}, path)
    return TensorSpec(str(t.get("name")), (None, *shape[1:]), str(t["dtype"]))
