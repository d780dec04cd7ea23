"""Verify an artifact before it serves: sha256, it loads, its outputs on stored samples agree
with its recorded parity, its latency is measured.

The stored samples travel beside the artifact as ``<artifact>.check.npz`` (plain arrays, read
with ``allow_pickle=False``): validation inputs and the reference model's outputs on them, written
on the workstation by :func:`write_check`. On the device the candidate runs those inputs and is
held to the thresholds its export was held to, and to the drift its export recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, sha256_file
from ..errors import ArtifactError
from ..runtime import Runner, load

log = logging.getLogger("edgecompress")

CHECK_SUFFIX = ".check.npz"
# formats whose runner may be called from several threads at once (ONNX Runtime's session.run
# is; LiteRT's interpreter, ncnn's net and the OpenVINO runner's single infer request are not)
THREAD_SAFE_FORMATS = frozenset({"onnx"})


class VerificationError(ArtifactError):
    """A candidate artifact failed a check; the message says which and why."""


def check_path(artifact: str | Path) -> Path:
    p = Path(artifact)
    return p / "edgecompress.check.npz" if p.is_dir() else p.with_name(p.name + CHECK_SUFFIX)


def write_check(artifact: Any, dm: Any, samples: int = 32) -> Path:
    """Store ``samples`` validation inputs and the reference model's outputs beside an artifact.

    Run on the workstation (it needs torch and the DeployableModel ``dm`` the artifact came
    from); the server's verification reads the file back without torch.
    """
    import torch  # workstation side only

    path = Path(getattr(artifact, "path", artifact))
    precision = getattr(artifact, "precision", "fp32")
    reference = dm.model if str(precision).startswith("int8") or dm.float_model is None else dm.float_model
    x = dm.sample_inputs(samples)
    with torch.no_grad():
        ref = reference.eval()(x).float().cpu().numpy()
    target = check_path(path)
    with atomic_path(target, overwrite=True) as tmp:  # our own companion file of the artifact
        with open(tmp, "wb") as fh:
            np.savez(fh, inputs=x.numpy(), reference=ref)
    return target


@dataclass
class LoadedModel:
    """A verified, loaded artifact and what was measured of it when it was loaded."""

    runner: Runner
    path: Path
    sha256: str
    version: int
    verification: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._state = threading.Lock()
        self._retired = False
        # LiteRT's interpreter and ncnn's net hold per-call state: one call at a time
        self._call_lock = (nullcontext() if self.runner.format in THREAD_SAFE_FORMATS
                           else threading.Lock())

    @property
    def metadata(self) -> dict[str, Any]:
        return self.runner.metadata or {}

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._call_lock:
            return self.runner(x)

    def enter(self) -> "LoadedModel":
        with self._state:
            self.in_flight += 1
        return self

    def leave(self) -> None:
        with self._state:
            self.in_flight -= 1
            close = self._retired and self.in_flight == 0
        if close:
            self.runner.close()

    def retire(self) -> None:
        """No new requests come here; close the runtime once the last one in flight is done."""
        with self._state:
            self._retired = True
            close = self.in_flight == 0
        if close:
            self.runner.close()

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        return {"path": str(self.path), "version": self.version, "sha256": self.sha256,
                "format": self.runner.format, "precision": meta.get("precision"),
                "inputs": [s.to_dict() for s in self.runner.inputs],
                "outputs": [s.to_dict() for s in self.runner.outputs],
                "class_names": meta.get("class_names"), "num_classes": meta.get("num_classes"),
                "preprocess": meta.get("preprocess"), "parity": meta.get("parity"),
                "accuracy": meta.get("accuracy"), "verification": self.verification,
                "loaded_at": self.loaded_at}


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    if not path.is_dir():
        return sha256_file(path)
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def _recorded_sha(runner: Runner) -> bool:
    return bool(runner.metadata.get("weights_sha256"))


def compare_outputs(ref: np.ndarray, out: np.ndarray, recorded: dict[str, Any]) -> dict[str, Any]:
    """Hold ``out`` to the thresholds the export recorded in ``recorded`` (its parity entry).

    Agreement must reach the export's minimum less one sample (the stored samples are a
    subset of the ones the export checked); the largest difference must stay within the
    export's allowed difference, or, where none was set (INT8), within 1.5x the difference the
    export measured plus 1e-4 of the output scale.
    """
    if ref.shape != out.shape:
        return {"passed": False, "reason": f"output shape {out.shape}, expected {ref.shape}"}
    n = max(1, ref.shape[0])
    diff = float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()) if ref.size else 0.0
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    agree = float((ref.reshape(n, -1).argmax(1) == out.reshape(n, -1).argmax(1)).mean())
    allowed = recorded.get("max_allowed_diff")
    if allowed is None:
        measured = recorded.get("max_abs_diff")
        allowed = None if measured is None else 1.5 * float(measured) + 1e-4 * scale
    min_agree = float(recorded.get("min_agreement", 0.98)) - 1.0 / n
    result = {"samples": n, "max_abs_diff": diff, "top1_agreement": agree,
              "allowed_diff": allowed, "min_agreement": round(min_agree, 4), "passed": True}
    if agree < min_agree:
        result.update(passed=False, reason=f"top-1 agreement {100 * agree:.1f}% < "
                                           f"{100 * min_agree:.1f}% allowed")
    elif allowed is not None and diff > allowed:
        result.update(passed=False, reason=f"max|diff| {diff:.4g} > {allowed:.4g} allowed")
    return result


def _check_samples(runner: Runner, path: Path) -> dict[str, Any]:
    """Run the stored samples; compare with the reference under the recorded parity."""
    check = check_path(path)
    recorded = runner.metadata.get("parity") or {}
    if recorded and not recorded.get("passed", False):
        raise VerificationError(f"{path.name}: its export recorded a FAILED parity check "
                                f"({recorded}); refusing to serve it")
    if not check.exists():
        x = runner.sample_input(1)
        out = np.asarray(runner(x))
        if not np.isfinite(out).all():
            raise VerificationError(f"{path.name}: outputs on a sample input are not finite")
        return {"samples": 0, "note": f"no stored samples ({check.name}); ran one random input"}
    try:
        with np.load(check, allow_pickle=False) as data:
            x, ref = data["inputs"], data["reference"]
    except (OSError, ValueError, KeyError) as exc:
        raise VerificationError(f"{check} is unreadable (expected arrays 'inputs' and "
                                f"'reference'): {exc}") from exc
    out = np.asarray(runner(x.astype(runner.inputs[0].dtype)))
    result = compare_outputs(ref, out, recorded)
    if not result["passed"]:
        raise VerificationError(f"{path.name}: outputs on its {len(x)} stored samples disagree "
                                f"with its recorded parity: {result['reason']}")
    return result


def load_verified(path: str | Path, version: int, threads: int | None = None,
                  expected_sha256: str | None = None, require_recorded_sha: bool = True,
                  max_latency_ms: float | None = None, latency_runs: int = 20) -> LoadedModel:
    """Load ``path`` and run every check; :class:`VerificationError` (or ArtifactError) says
    which failed. The runner is closed again when a check fails."""
    path = Path(path)
    t0 = time.perf_counter()
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256.strip().lower():
        raise VerificationError(f"{path.name}: sha256 {sha[:16]}… does not match the manifest's "
                                f"{expected_sha256[:16]}… (corrupted in transfer?)")
    runner = load(path, threads=threads)  # checks the weights against their recorded sha256
    try:
        if require_recorded_sha and not _recorded_sha(runner):
            raise VerificationError(f"{path.name} carries no recorded weights sha256, so its "
                                    f"integrity cannot be checked; export it with edgecompress")
        samples = _check_samples(runner, path)
        stats = runner.benchmark(warmup=3, runs=latency_runs, with_system=False)
        if max_latency_ms is not None and stats.p50_ms > max_latency_ms:
            raise VerificationError(f"{path.name}: p50 latency {stats.p50_ms:.2f} ms exceeds the "
                                    f"allowed {max_latency_ms} ms")
    except BaseException:
        runner.close()
        raise
    verification = {"sha256": sha, "manifest_sha256_checked": bool(expected_sha256),
                    "weights_sha256_checked": _recorded_sha(runner), "samples": samples,
                    "latency_p50_ms": round(stats.p50_ms, 4), "latency_p99_ms": round(stats.p99_ms, 4),
                    "verify_seconds": round(time.perf_counter() - t0, 3)}
    return LoadedModel(runner, path, sha, version, verification)


def load_published(path: Path, version: int, sha256: str, threads: int | None,
                   verification: dict[str, Any]) -> LoadedModel:
    """Load a version another server process verified and published: only its sha256 is
    checked again (the file is the one that passed), then it loads."""
    sha = file_sha256(path)
    if sha != sha256:
        raise VerificationError(f"{path}: sha256 {sha[:16]}… is not the {sha256[:16]}… that "
                                f"was verified and published; the version folder was changed")
    return LoadedModel(load(path, threads=threads), path, sha, version, verification)
