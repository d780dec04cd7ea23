"""What ``edgecompress serve`` is configured with, and where its swap token comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .watchdog import ThermalPolicy

TOKEN_ENV = "EDGECOMPRESS_SERVE_TOKEN"


@dataclass
class ServeConfig:
    """Options of one server. ``workers`` are inference threads in the one server process
    (one copy of the model in memory; swap and watchdog state stay consistent); ``queue`` is
    how many more requests may wait before new ones get 503. Requests that wait are stacked
    into one runner call of up to ``max_batch`` rows when the model's batch dimension is
    dynamic; ``batch_wait_ms`` > 0 lets a worker wait that long for a fuller batch."""

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
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

    def __post_init__(self) -> None:
        self.artifact = Path(self.artifact)
        self.state_dir = Path(self.state_dir)
        if self.workers < 1 or self.queue < 0:
            raise ConfigError(f"--workers must be >= 1 and --queue >= 0 (got {self.workers}, "
                              f"{self.queue})")
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise ConfigError(f"--max-batch must be >= 1 and --batch-wait-ms >= 0 (got "
                              f"{self.max_batch}, {self.batch_wait_ms})")
        if self.max_body_mb <= 0 or self.keep < 1:
            raise ConfigError("--max-body-mb must be > 0 and --keep >= 1")

    @property
    def events_db(self) -> Path:
        return self.state_dir / "events.db"


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
