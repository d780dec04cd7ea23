"""The Runner interface: run any artifact on numpy inputs and measure its latency."""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import ArtifactError, InputError
from .system import peak_rss_mb, system_status

log = logging.getLogger("edgecompress")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None or a name for a dynamic dimension) and numpy dtype name of a tensor."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _load_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform (Windows)
        return None


@dataclass
class LatencyStats:
    """Latency of repeated single calls, in milliseconds, with the system's state alongside."""

    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    fps: float
    peak_rss_mb: float
    runs: int
    warmup: int
    batch_size: int
    threads: int | None = None
    system: dict[str, Any] = field(default_factory=dict)
    p10_ms: float | None = None
    load_1min: float | None = None  # the machine's load average right after the timed runs

    def to_dict(self) -> dict[str, Any]:
        """The statistics as plain data (JSON-safe)."""
        return asdict(self)

    def __str__(self) -> str:
        spread = f" (p10 {self.p10_ms:.3f})" if self.p10_ms is not None else ""
        return (f"p50 {self.p50_ms:.3f} ms{spread} | mean {self.mean_ms:.3f} ms | p90 {self.p90_ms:.3f} | "
                f"p99 {self.p99_ms:.3f} | min {self.min_ms:.3f} | max {self.max_ms:.3f} | "
                f"{self.fps:.1f} FPS (batch {self.batch_size}, {self.runs} runs) | "
                f"peak RSS {self.peak_rss_mb:.0f} MB")

    @classmethod
    def from_times(cls, times_s: Sequence[float], warmup: int, batch_size: int,
                   threads: int | None, with_system: bool = True) -> "LatencyStats":
        """Statistics of per-call wall times in seconds (percentiles, FPS, peak RSS, load)."""
        ms = np.asarray(times_s, dtype=np.float64) * 1000.0
        mean = float(ms.mean())
        pct = {p: float(np.percentile(ms, p)) for p in (10, 50, 90, 95, 99)}
        return cls(mean_ms=mean, min_ms=float(ms.min()), max_ms=float(ms.max()),
                   p50_ms=pct[50], p90_ms=pct[90], p95_ms=pct[95], p99_ms=pct[99],
                   fps=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
                   peak_rss_mb=peak_rss_mb(), runs=len(ms), warmup=warmup,
                   batch_size=batch_size, threads=threads,
                   system=system_status(cpu_interval=0.05) if with_system else {},
                   p10_ms=pct[10], load_1min=_load_1min())


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Runner:
    """Runs one artifact. Subclasses implement :meth:`_load`, :meth:`_run` and the specs.

    Call it with a numpy array (or torch tensor) and get a numpy array back. Inputs are checked
    against :attr:`inputs`; a mismatch raises :class:`InputError` saying what was expected.
    """

    format: ClassVar[str] = "?"
    # False: calls are serialised by a lock, so one runner may be shared by threads (most
    # runtimes keep per-interpreter state: LiteRT's tensors, torch's quantized engine)
    thread_safe: ClassVar[bool] = False

    def __init__(self, path: str | Path, threads: int | None = None, **options: Any):
        self._lock = threading.Lock()
        self.verified: bool | None = None  # set by edgecompress.load: sha256 record matched
        self.path = Path(path)
        self.threads = threads
        # an exporter verifying a fresh artifact passes its metadata, which is stored afterwards
        self.metadata: dict[str, Any] = dict(options.pop("metadata", None) or {})
        self.options = options
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        if not self.path.exists():
            raise ArtifactError(f"artifact {self.path} does not exist")
        self._load()

    # -- to implement -------------------------------------------------------------------------
    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public -----------------------------------------------------------------------------
    def __call__(self, x: Any) -> np.ndarray:
        arr = self.check_input(_to_numpy(x))
        if self.thread_safe:
            return self._run_batches(arr)
        # a plugin runner may override __init__ without calling ours: make the lock here then
        lock = self.__dict__.get("_lock") or self.__dict__.setdefault("_lock", threading.Lock())
        with lock:
            return self._run_batches(arr)

    def _run_batches(self, arr: np.ndarray) -> np.ndarray:
        batch_dim = self.inputs[0].shape[0] if self.inputs else None
        if isinstance(batch_dim, int) and arr.shape[0] != batch_dim:
            if arr.shape[0] % batch_dim:
                raise InputError(f"{self.path.name} takes batches of exactly {batch_dim}; got "
                                 f"{arr.shape[0]} inputs")
            parts = [self._run(arr[i:i + batch_dim]) for i in range(0, arr.shape[0], batch_dim)]
            return np.concatenate(parts)
        return self._run(arr)

    def check_input(self, arr: np.ndarray) -> np.ndarray:
        """Validate ``arr`` against the first input's spec; return it contiguous."""
        if not self.inputs:
            return np.ascontiguousarray(arr)
        spec = self.inputs[0]
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(f"{self.path.name}: input '{spec.name}' has dtype {arr.dtype}; "
                             f"expected {spec.dtype} (convert with x.astype(np.{spec.dtype}))")
        if arr.ndim != len(spec.shape):
            raise InputError(f"{self.path.name}: input '{spec.name}' has shape {arr.shape}; "
                             f"expected {len(spec.shape)} dimensions {_shape_text(spec.shape)}")
        for i, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if i > 0 and isinstance(want, int) and got != want:
                raise InputError(f"{self.path.name}: input '{spec.name}' has shape {arr.shape}; "
                                 f"expected {_shape_text(spec.shape)} (dimension {i} must be "
                                 f"{want})")
        return np.ascontiguousarray(arr)

    def sample_input(self, batch_size: int = 1, seed: int = 0) -> np.ndarray:
        """A random input of the right shape and dtype (dynamic dims other than batch → 1)."""
        spec = self.inputs[0]
        shape = [batch_size if i == 0 else (d if isinstance(d, int) else 1)
                 for i, d in enumerate(spec.shape)]
        rng = np.random.default_rng(seed)
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            info = np.iinfo(np.dtype(spec.dtype))
            return rng.integers(info.min, info.max, size=shape, dtype=spec.dtype)
        return rng.standard_normal(shape).astype(spec.dtype)

    def benchmark(self, warmup: int = 10, runs: int = 100, batch_size: int = 1,
                  x: Any = None, with_system: bool = True) -> LatencyStats:
        """Time ``runs`` calls after ``warmup`` untimed ones; return :class:`LatencyStats`."""
        if runs < 1 or warmup < 0:
            raise InputError(f"benchmark needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
        arr = self.check_input(_to_numpy(x)) if x is not None else self.sample_input(batch_size)
        for _ in range(warmup):
            self(arr)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self(arr)
            times.append(time.perf_counter() - t0)
        return LatencyStats.from_times(times, warmup, arr.shape[0], self.threads, with_system)

    def info(self) -> dict[str, Any]:
        """Path, format, size, inputs, outputs and metadata of the loaded artifact."""
        from .._io import path_size
        return {"path": str(self.path), "format": self.format, "size_bytes": path_size(self.path),
                "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs], "verified": self.verified,
                "metadata": self.metadata}

    def close(self) -> None:
        """Release the runtime's resources (optional)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, threads={self.threads})"


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("N" if i == 0 and not isinstance(d, int) else
                           str(d if d is not None else "?") for i, d in enumerate(shape)) + ")"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
