"""What ``edgecompress serve`` is configured with, and where its swap token comes from."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .watchdog import ThermalPolicy

TOKEN_ENV = "EDGECOMPRESS_SERVE_TOKEN"


@dataclass
class ServeConfig:
    """Options of one server.

    ``workers`` are server processes behind the port, each with its own copy of the model (1:
    one process; more: they share one view of the served version, the thermal state, the
    metrics and the event log through ``state_dir``, see :mod:`~edgecompress.serve.shared`).
    ``infer_threads`` are the inference threads of each process (0: run the model on the event
    loop itself, no hand-off and no batching; for a model faster than the hand-off, with one
    worker per core). ``queue`` is how many more requests may wait in each process before new
    ones get 503. Requests that wait are stacked into one runner call of up to ``max_batch``
    rows when the model's batch dimension is dynamic; ``batch_wait_ms`` > 0 lets a thread wait
    that long for a fuller batch. ``threads`` (the runtime's own threads per call) defaults,
    with several workers, to the cores divided among them, so they do not oversubscribe them.
    """

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    infer_threads: int = 1
    queue: int = 16
    max_batch: int = 8
    batch_wait_ms: float = 0.0
    threads: int | None = None  # runtime threads per call (None: the runtime's default)
    token: str | None = None  # None: POST /model is disabled
    max_body_mb: float = 8.0  # /predict bodies
    max_model_mb: float = 512.0  # /model uploads
    state_dir: Path = Path("edgecompress-serve")
    keep: int = 3
    watch: Path | None = None
    watch_interval_s: float = 2.0
    fallback: Path | None = None
    thermal: ThermalPolicy | None = None
    temperature_source: Callable[[], float | None] | None = field(default=None, repr=False)
    retention_days: float = 30.0
    top_k: int = 5
    max_latency_ms: float | None = None
    loop: str = "auto"  # uvicorn's event loop: auto (uvloop when installed), asyncio, uvloop
    http: str = "auto"  # uvicorn's HTTP parser: auto (httptools when installed), h11, httptools

    def __post_init__(self) -> None:
        self.artifact = Path(self.artifact)
        self.state_dir = Path(self.state_dir)
        if self.workers < 1 or self.infer_threads < 0 or self.queue < 0:
            raise ConfigError(f"--workers must be >= 1, --infer-threads >= 0 and --queue >= 0 "
                              f"(got {self.workers}, {self.infer_threads}, {self.queue})")
        if self.workers > 1 and os.name != "posix":
            raise ConfigError("--workers > 1 needs a POSIX system (file locks and passing "
                              "sockets between processes); use --workers 1 here")
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise ConfigError(f"--max-batch must be >= 1 and --batch-wait-ms >= 0 (got "
                              f"{self.max_batch}, {self.batch_wait_ms})")
        if self.max_body_mb <= 0 or self.keep < 1:
            raise ConfigError("--max-body-mb must be > 0 and --keep >= 1")

    @property
    def events_db(self) -> Path:
        return self.state_dir / "events.db"

    def runtime_threads(self) -> int | None:
        """``threads``, or with several workers the cores shared out among them."""
        if self.threads is not None or self.workers == 1:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def to_json(self) -> str:
        """The options as JSON, for the worker processes (the temperature source stays here:
        the supervisor runs the watchdog)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "temperature_source"}
        data["thermal"] = asdict(self.thermal) if self.thermal else None
        return json.dumps(data, default=str)

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        for name in ("watch", "fallback"):
            data[name] = Path(data[name]) if data[name] else None
        data["thermal"] = ThermalPolicy(**data["thermal"]) if data["thermal"] else None
        return cls(**data)


def read_token(token_file: str | Path | None = None, env: str = TOKEN_ENV) -> str | None:
    """The swap token from ``token_file`` (first line) or the environment; None when neither.

    A token file readable by others is refused: the token authorises replacing the model.
    """
    if token_file:
        path = Path(token_file)
        if not path.exists():
            raise ConfigError(f"token file {path} does not exist")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise ConfigError(f"token file {path} is readable by other users; "
                              f"run: chmod 600 {path}")
        text = path.read_text().strip()
        return _strong(text.splitlines()[0].strip() if text else "", f"the token in {path}")
    value = os.environ.get(env, "").strip()
    return _strong(value, f"${env}") if value else None


def _strong(token: str, where: str) -> str:
    if len(token) < 16:
        raise ConfigError(f"{where} is shorter than 16 characters; make one with "
                          f"python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """uvicorn's options for ``config`` (one process, or each worker)."""
    # uvicorn's own limit keeps idle connections from piling up on a small device; a short
    # keep-alive timeout races busy clients (the server closes a connection as a request
    # arrives on it, and that request fails), so it is longer than any stall under load
    return {"host": config.host, "port": config.port, "log_level": "warning",
            "limit_concurrency": max(64, 4 * (config.infer_threads + config.queue)),
            "timeout_keep_alive": 30, "access_log": False, "loop": config.loop,
            "http": config.http}
