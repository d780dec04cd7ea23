"""The Runner interface: run any artifact on numpy inputs and measure its latency."""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import ArtifactError, InputError
from .system import peak_rss_mb, system_status
from .tensor_spec import TensorSpec

log = logging.getLogger("edgecompress")


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


def is_several(x: Any) -> bool:
    """True when ``x`` holds several inputs (a dict, or a tuple/list of arrays or tensors) rather
    than one array (a nested list of numbers is one array, as ``np.asarray`` reads it)."""
    if isinstance(x, Mapping):
        return True
    return isinstance(x, (tuple, list)) and bool(x) and all(hasattr(v, "shape") for v in x)


def input_arrays(x: Any, names: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """The model inputs ``x`` — one array or tensor, a tuple/list in call order, or a dict by
    name — as ``{name: array}`` in the order of ``names``; :class:`InputError` when they do not
    fit. With no ``names`` known (an unchecked runner) one input is called ``"input"``."""
    if isinstance(x, Mapping):
        given = {str(k): _to_numpy(v) for k, v in x.items()}
        if not names:
            return given
        missing = [n for n in names if n not in given]
        extra = [k for k in given if k not in names]
        if missing or extra:
            raise InputError(f"{where}: inputs {sorted(given)} do not match the model's "
                             f"{list(names)} (missing {missing}, unknown {extra}); pass a dict "
                             f"with exactly those names, or a tuple in that order")
        return {n: given[n] for n in names}
    if is_several(x):
        if names and len(x) != len(names):
            raise InputError(f"{where}: got {len(x)} inputs; the model takes {len(names)} "
                             f"({', '.join(names)})")
        keys = list(names) or [f"input_{i}" for i in range(len(x))]
        return {n: _to_numpy(v) for n, v in zip(keys, x)}
    if len(names) > 1:
        raise InputError(f"{where}: got one array; the model takes {len(names)} inputs "
                         f"({', '.join(names)}): pass a tuple in that order or a dict by name")
    return {names[0] if names else "input": _to_numpy(x)}


def batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    """The batch size of a set of inputs (their first dimension; 1 for scalars)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


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
    def _run_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name for inputs by name. Runners of multi-input or multi-output
        artifacts override this; the default runs a single-input artifact through :meth:`_run`."""
        if len(feeds) != 1:
            raise InputError(f"{self.path.name}: {type(self).__name__} runs single-input models; "
                             f"got {len(feeds)} inputs")
        name = self.outputs[0].name if self.outputs else "output"
        return {name: self._run(next(iter(feeds.values())))}

    def __call__(self, x: Any) -> Any:
        """The first output for ``x`` (one array, a tuple in call order, or a dict by name);
        for a detector artifact given an image (a path, a Pillow image, an HWC uint8 array),
        its detections (:meth:`detect`)."""
        if self.metadata.get("detection") and _is_image(x):
            return self.detect(x)
        if not is_several(x) and len(self.inputs) <= 1:
            arr = self.check_input(_to_numpy(x))
            return self._locked(self._run_batches, arr)
        return next(iter(self.run_named(x).values()))

    def detect(self, image: Any) -> dict[str, np.ndarray]:
        """Detections of a detector artifact on one image (a path, a Pillow image or an HWC
        uint8 array), in the image's own pixels: ``{"boxes": (N, 4) xyxy float32, "scores":
        (N,) float32, "labels": (N,) int64}``. Resizing (stretch or letterbox), normalisation,
        decoding and NMS follow the artifact's metadata (:mod:`edgecompress.runtime.detect`)."""
        from .detect import detect

        return detect(self, image)

    def run_named(self, x: Any) -> dict[str, np.ndarray]:
        """Every output, by name in the artifact's order, for ``x``: one array or tensor, a
        tuple/list in call order, or a dict ``{input name: array}``. The names are the
        artifact's own (for formats that keep none, those recorded at export by
        :func:`edgecompress.signature.flatten_outputs`)."""
        feeds = self.check_inputs(x)
        return self._locked(self._run_batches_named, feeds)

    def _locked(self, fn: Any, arg: Any) -> Any:
        if self.thread_safe:
            return fn(arg)
        # a plugin runner may override __init__ without calling ours: make the lock here then
        lock = self.__dict__.get("_lock") or self.__dict__.setdefault("_lock", threading.Lock())
        with lock:
            return fn(arg)

    def _fixed_batch(self, n: int) -> int | None:
        batch_dim = self.inputs[0].shape[0] if self.inputs else None
        if not isinstance(batch_dim, int) or n == batch_dim:
            return None
        if n % batch_dim:
            raise InputError(f"{self.path.name} takes batches of exactly {batch_dim}; got "
                             f"{n} inputs")
        return batch_dim

    def _run_batches(self, arr: np.ndarray) -> np.ndarray:
        step = self._fixed_batch(arr.shape[0])
        if step is None:
            return self._run(arr)
        return np.concatenate([self._run(arr[i:i + step]) for i in range(0, arr.shape[0], step)])

    def _run_batches_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = batch_of(feeds)
        step = self._fixed_batch(n)
        if step is None:
            return self._run_named(feeds)
        parts = [self._run_named({k: v[i:i + step] for k, v in feeds.items()})
                 for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def check_inputs(self, x: Any) -> dict[str, np.ndarray]:
        """``x`` as ``{input name: contiguous array}``, each checked against its spec."""
        feeds = input_arrays(x, [s.name for s in self.inputs], self.path.name)
        specs = {s.name: s for s in self.inputs}
        return {k: self._checked(specs[k], v) if k in specs else np.ascontiguousarray(v)
                for k, v in feeds.items()}

    def check_input(self, arr: np.ndarray) -> np.ndarray:
        """Validate ``arr`` against the first input's spec; return it contiguous."""
        if not self.inputs:
            return np.ascontiguousarray(arr)
        return self._checked(self.inputs[0], arr)

    def _checked(self, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
        arr = _narrowed(arr, np.dtype(spec.dtype))
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

    def sample_input(self, batch_size: int = 1, seed: int = 0) -> Any:
        """A random input of the right shapes and dtypes (dynamic dims other than batch → 1):
        one array for a single-input model, else ``{name: array}``. Integer inputs (token ids,
        masks) are 0 or 1, valid for any embedding; time real samples where you have them."""
        rng = np.random.default_rng(seed)
        feeds = {s.name: _random(s, batch_size, rng) for s in self.inputs}
        return next(iter(feeds.values())) if len(feeds) == 1 else feeds

    def benchmark(self, warmup: int = 10, runs: int = 100, batch_size: int = 1,
                  x: Any = None, with_system: bool = True) -> LatencyStats:
        """Time ``runs`` calls after ``warmup`` untimed ones; return :class:`LatencyStats`."""
        if runs < 1 or warmup < 0:
            raise InputError(f"benchmark needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
        x = self.sample_input(batch_size) if x is None else x
        feeds = self.check_inputs(x)
        arr: Any = next(iter(feeds.values())) if len(feeds) == 1 and not is_several(x) else feeds
        for _ in range(warmup):
            self(arr)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self(arr)
            times.append(time.perf_counter() - t0)
        return LatencyStats.from_times(times, warmup, batch_of(feeds), self.threads, with_system)

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


def _is_image(x: Any) -> bool:
    from .detect import is_image

    return is_image(x)


def _narrowed(arr: np.ndarray, want: np.dtype) -> np.ndarray:
    """int64 token ids for a file that takes int32 (LiteRT's converter narrows 64-bit inputs):
    cast when every value fits, so nothing is lost; anything else is left for the check."""
    if arr.dtype == want or not (np.issubdtype(arr.dtype, np.integer)
                                 and np.issubdtype(want, np.integer)):
        return arr
    info = np.iinfo(want)
    if arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max):
        return arr.astype(want)
    return arr


def _random(spec: TensorSpec, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    shape = [batch_size if i == 0 else (d if isinstance(d, int) else 1)
             for i, d in enumerate(spec.shape)]
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def renamed(specs: Sequence[TensorSpec], names: Sequence[str] | None) -> list[TensorSpec]:
    """``specs`` with ``names`` (those an exporter recorded) when there are as many of them;
    for formats whose own tensor names are generated (``serving_default_args_0:0``)."""
    if not names or len(names) != len(specs):
        return list(specs)
    return [TensorSpec(n, s.shape, s.dtype) for n, s in zip(names, specs)]


def recorded_names(metadata: Mapping[str, Any], side: str) -> list[str] | None:
    """The input or output names (``side``) an exporter recorded in the artifact's metadata."""
    sig = metadata.get("signature")
    if not isinstance(sig, Mapping) or not isinstance(sig.get(side), list):
        return None
    names = [t.get("name") for t in sig[side] if isinstance(t, Mapping)]
    return [str(n) for n in names] if names and all(names) else None


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("N" if i == 0 and not isinstance(d, int) else
                           str(d if d is not None else "?") for i, d in enumerate(shape)) + ")"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
