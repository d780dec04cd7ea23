"""The parent of ``edgecompress serve --workers N``: it verifies the artifact (and fallback)
once, publishes them as the shared view every worker loads, runs the thermal watchdog for all
of them, and records start and stop (the processes themselves: :mod:`.workers`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from .config import ServeConfig
from .events import EventLog
from .shared import SharedState
from .verify import LoadedModel, load_verified
from .watchdog import ThermalWatchdog, auto_temperature

log = logging.getLogger("edgecompress")


class SharedWatchdog(ThermalWatchdog):
    """The watchdog of several workers: it also publishes each reading, so every worker's
    ``/health`` and ``/metrics`` show the temperature the policy acted on."""

    def check(self) -> None:
        super().check()
        self.slot.publish_thermal(self.last_c, self.hot)


class Supervisor:
    """What the parent process decides for every worker (it serves no requests itself).

    To the watchdog it is both the slot (``use_fallback``) and the admission (``set_rate``):
    each decision is published, and every worker applies it from its next request on."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.shared = SharedState(config.state_dir)
        self.events = EventLog(config.events_db, retention_days=config.retention_days)
        threads = config.runtime_threads()
        primary = load_verified(config.artifact, 1, threads=threads, require_recorded_sha=False)
        self.fallback: LoadedModel | None = (
            load_verified(config.fallback, 0, threads=threads, require_recorded_sha=False)
            if config.fallback else None)
        for model in (primary, self.fallback):  # the workers load their own copies
            if model is not None:
                model.runner.close()
        self.primary = primary
        self.metrics_dir = config.state_dir / "metrics"
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # our own files of a previous run
        self.metrics_dir.mkdir(parents=True)
        self.shared.publish(**self._initial_view())
        self._published_c: float | None = None
        self.watchdog = (SharedWatchdog(config.thermal, self, self, self.events,
                                        source=config.temperature_source or auto_temperature)
                         if config.thermal else None)

    def _initial_view(self) -> dict[str, Any]:
        p, f = self.primary, self.fallback
        return {"version": p.version, "path": str(Path(p.path).resolve()), "sha256": p.sha256,
                "verification": p.verification,
                "fallback_path": str(Path(f.path).resolve()) if f else None,
                "fallback_sha256": f.sha256 if f else None, "on_fallback": False,
                "rate_limit_rps": None, "thermal_hot": False, "temperature_c": None,
                "workers": self.config.workers}

    # -- what the watchdog calls ---------------------------------------------------------------
    def use_fallback(self, on: bool, reason: str) -> bool:
        if self.fallback is None:
            return False
        self.shared.publish(on_fallback=on)
        self.events.record("fallback" if on else "primary", reason, workers=self.config.workers,
                           serving=str(self.fallback.path if on else self.primary.path))
        return True

    def set_rate(self, rate: float | None) -> None:
        self.shared.publish(rate_limit_rps=rate)

    def publish_thermal(self, temperature: float | None, hot: bool) -> None:
        """Publish a reading that moved by half a degree or more (workers re-read the view
        only when it changes)."""
        last = self._published_c
        if temperature is None or (last is not None and abs(temperature - last) < 0.5):
            return
        self._published_c = temperature
        self.shared.publish(temperature_c=temperature, thermal_hot=hot)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.watchdog is not None:
            self.watchdog.start()
        c = self.config
        self.events.record("start", f"serving {self.primary.path.name}",
                           sha256=self.primary.sha256, workers=c.workers,
                           infer_threads=c.infer_threads, runtime_threads=c.runtime_threads(),
                           queue=c.queue, max_batch=c.max_batch, swap_enabled=c.token is not None)

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.events.record("stop", "server stopped", workers=self.config.workers)
        self.events.close()
