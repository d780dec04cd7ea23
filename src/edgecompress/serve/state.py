"""Everything one server process holds: the model slot, admission, events, metrics and the
monitors. With several worker processes (``workers`` > 1) each holds its own, and the slot
follows the shared view the supervisor and the other workers publish (see
:mod:`~edgecompress.serve.shared`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .admission import Admission
from .config import ServeConfig
from .events import EventLog, MinuteStats
from .metrics import Metrics
from .shared import SharedState, claim
from .swap import ModelSlot, VersionStore
from .verify import LoadedModel, load_published, load_verified
from .watchdog import ThermalWatchdog, auto_temperature
from .watcher import FolderWatcher

log = logging.getLogger("edgecompress")

WATCH_LOCK = "watch.lock"


@dataclass
class ServerState:
    config: ServeConfig
    slot: ModelSlot
    admission: Admission
    events: EventLog
    stats: MinuteStats
    metrics: Metrics
    watchdog: ThermalWatchdog | None
    watcher: FolderWatcher | None
    started_at: float
    view: dict[str, Any] = field(default_factory=dict)  # the shared fields last applied
    _hold: IO[str] | None = field(default=None, repr=False)  # the watcher's claim
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def worker(self) -> bool:
        """One of several server processes (the supervisor records start and stop)."""
        return self.slot.shared is not None

    def start(self) -> None:
        for monitor in (self.watchdog, self.watcher):
            if monitor is not None:
                monitor.start()
        if not self.worker:
            self.events.record("start", f"serving {self.slot.primary.path.name}",
                               sha256=self.slot.primary.sha256, workers=1,
                               infer_threads=self.config.infer_threads, queue=self.config.queue,
                               max_batch=self.config.max_batch,
                               swap_enabled=self.config.token is not None)

    def stop(self) -> None:
        for monitor in (self.watchdog, self.watcher):
            if monitor is not None:
                monitor.stop()
        self.stats.flush(force=True)
        self.admission.close()
        if not self.worker:
            self.events.record("stop", "server stopped")
        self.events.close()

    async def refresh(self) -> None:
        """Catch up with the shared view when another process changed it (several workers;
        the check is one ``stat``). Loading a newly published version runs off the event loop;
        requests arriving meanwhile wait for it, so none is answered by a version older than
        one a client was already told was swapped in."""
        if not self.slot.stale():
            return
        async with self._refreshing:
            if self.slot.stale():
                await asyncio.get_running_loop().run_in_executor(None, self.slot.sync)

    def apply_view(self, fields: dict[str, Any]) -> None:
        """The thermal fields of the shared view: this process's share of the rate cap."""
        rate = fields.get("rate_limit_rps")
        if rate != self.view.get("rate_limit_rps"):
            self.admission.set_rate(rate / max(1, self.config.workers) if rate else None)
        self.view = fields
        self.metrics.set_view(self.slot.current.version, fields.get("temperature_c"))

    def thermal(self) -> tuple[float | None, bool]:
        """(last temperature, hot) as the watchdog, or with several workers the supervisor's
        watchdog, last saw them."""
        if self.watchdog is not None:
            return self.watchdog.last_c, self.watchdog.hot
        return self.view.get("temperature_c"), bool(self.view.get("thermal_hot"))


def _models(config: ServeConfig, shared: SharedState | None,
            threads: int | None) -> tuple[LoadedModel, LoadedModel | None]:
    """The primary and fallback: verified here (one process), or loaded as the supervisor
    verified and published them (a worker: only their sha256 is checked again)."""
    if shared is None:
        # the operator chose these files: they are verified but need not carry a recorded sha
        primary = load_verified(config.artifact, 1, threads=threads, require_recorded_sha=False)
        fallback = (load_verified(config.fallback, 0, threads=threads,
                                  require_recorded_sha=False) if config.fallback else None)
        return primary, fallback
    view, _ = shared.read()
    if not view:
        raise RuntimeError(f"no published model in {shared.path}: worker processes are started "
                           f"by `edgecompress serve --workers N`, which publishes it first")
    primary = load_published(Path(view["path"]), view["version"], view["sha256"], threads,
                             view.get("verification") or {})
    fallback = (load_published(Path(view["fallback_path"]), 0, view["fallback_sha256"], threads,
                               {}) if view.get("fallback_path") else None)
    return primary, fallback


def build_state(config: ServeConfig, worker: bool = False) -> ServerState:
    """Load the artifact (and fallback), then wire the parts together. ``worker``: this is one
    of ``config.workers`` processes started by :func:`~edgecompress.serve.server.run`."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog(config.events_db, retention_days=config.retention_days)
    shared = SharedState(config.state_dir) if worker else None
    threads = config.runtime_threads()
    primary, fallback = _models(config, shared, threads)
    store = VersionStore(config.state_dir / "versions", keep=config.keep)
    slot = ModelSlot(primary, events, store, fallback=fallback, threads=threads,
                     max_latency_ms=config.max_latency_ms, shared=shared)
    admission = Admission(max(1, config.infer_threads), config.queue, config.max_batch,
                          config.batch_wait_ms, inline=config.infer_threads == 0)
    watchdog = None
    if config.thermal is not None and not worker:  # with workers, the supervisor watches
        watchdog = ThermalWatchdog(config.thermal, slot, admission, events,
                                   source=config.temperature_source or auto_temperature)
    hold = claim(config.state_dir, WATCH_LOCK) if worker and config.watch else None
    watcher = (FolderWatcher(config.watch, slot, config.watch_interval_s)
               if config.watch and (hold or not worker) else None)
    metrics = Metrics(queue_length=lambda: admission.waiting, in_flight=lambda: admission.in_flight,
                      temperature=lambda: state.thermal()[0],
                      version=lambda: slot.current.version, shared=worker)
    state = ServerState(config, slot, admission, events, MinuteStats(events), metrics, watchdog,
                        watcher, time.time(), _hold=hold)
    if worker:
        admission.observer = metrics.set_admission
        slot.on_change = state.apply_view
        slot.sync()  # the thermal fields, and a version published while this one loaded
        log.info("worker process %d serves version %d", os.getpid(), slot.primary.version)
    return state
