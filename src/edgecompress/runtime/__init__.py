"""Runtimes: one Runner per format behind one interface, found by :func:`load`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .base import LatencyStats, Runner, TensorSpec
from .system import system_status

log = logging.getLogger("edgecompress")


def load(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
         verify: bool | None = None, **options: Any) -> Runner:
    """Open an artifact with the Runner of its format (found from the suffix or folder).

    Args:
        path: the artifact (``.onnx``, ``.tflite``, ``.ptl``, an ncnn folder, ``.engine``, ``.ecm``).
        threads: CPU threads for the runtime (None: the runtime's default).
        providers: ONNX Runtime execution providers (ONNX only).
        verify: check the sha256 recorded at export. ``None`` (default): check when a record
            exists, else load with a warning and ``runner.verified = False``; ``True``: also
            refuse a file without records (always the case for ``.ecm``); ``False``: skip.
        **options: runner-specific options.
    """
    from .. import registry
    from ..metadata import read_sidecar, verify_sidecar

    spec = registry.formats.for_path(path)
    sidecar = read_sidecar(path)
    recorded = bool(sidecar.get("weights_sha256"))
    if recorded and verify is not False:
        verify_sidecar(path, sidecar)  # refuse weights altered after export
    runner_cls = registry.load_object(spec.runner)
    if providers is not None:
        options["providers"] = providers
    if spec.name in EMBEDDED_RECORDS:  # the record lives inside the file; its runner checks it
        options["verify"] = verify
    elif not recorded and verify is not False:
        _unverified(Path(path), verify)
    runner = runner_cls(path, threads=threads, **options)
    if spec.name not in EMBEDDED_RECORDS:
        runner.verified = recorded and verify is not False
    if sidecar and not runner.metadata:
        runner.metadata = sidecar
    return runner


EMBEDDED_RECORDS = ("onnx", "torch")  # formats that carry their sha256 inside the file


def _unverified(path: Path, verify: bool | None) -> None:
    from ..errors import ArtifactError
    from ..metadata import sidecar_path

    message = (f"{path} has no integrity record ({sidecar_path(path)} with weights_sha256 is "
               f"missing), so it cannot be checked against what was exported")
    if verify:
        raise ArtifactError(f"{message}; refused because verify=True. Re-export it, or pass "
                            f"verify=False to run it unverified")
    log.warning("%s; running it unverified", message)


__all__ = ["LatencyStats", "Runner", "TensorSpec", "load", "system_status"]
