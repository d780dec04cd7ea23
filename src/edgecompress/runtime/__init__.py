"""Runtimes: one Runner per format behind one interface, found by :func:`load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import LatencyStats, Runner, TensorSpec
from .system import system_status


def load(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
         **options: Any) -> Runner:
    """Open an artifact with the Runner of its format (found from the suffix or folder).

    Args:
        path: the artifact (``.onnx``, ``.tflite``, ``.ptl``, an ncnn folder, ``.engine``, ``.ecm``).
        threads: CPU threads for the runtime (None: the runtime's default).
        providers: ONNX Runtime execution providers (ONNX only).
        **options: runner-specific options (e.g. ``verify=False`` to skip the sha256 check).
    """
    from .. import registry
    from ..metadata import read_sidecar, verify_sidecar

    spec = registry.formats.for_path(path)
    sidecar = read_sidecar(path)
    if sidecar and options.get("verify", True):
        verify_sidecar(path, sidecar)  # refuse weights altered after export
    runner_cls = registry.load_object(spec.runner)
    if providers is not None:
        options["providers"] = providers
    runner = runner_cls(path, threads=threads, **options)
    if sidecar and not runner.metadata:
        runner.metadata = sidecar
    return runner


__all__ = ["LatencyStats", "Runner", "TensorSpec", "load", "system_status"]
