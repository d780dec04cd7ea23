"""Everything one server holds: the model slot, admission, events, metrics and the monitors."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from .admission import Admission
from .config import ServeConfig
from .events import EventLog, MinuteStats
from .metrics import Metrics
from .swap import ModelSlot, VersionStore
from .verify import load_verified
from .watchdog import ThermalWatchdog, auto_temperature
from .watcher import FolderWatcher

log = logging.getLogger("edgecompress")


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

    def start(self) -> None:
        for monitor in (self.watchdog, self.watcher):
            if monitor is not None:
                monitor.start()
        self.events.record("start", f"serving {self.slot.primary.path.name}",
                           sha256=self.slot.primary.sha256, workers=self.config.workers,
                           queue=self.config.queue, max_batch=self.config.max_batch,
                           swap_enabled=self.config.token is not None)

    def stop(self) -> None:
        for monitor in (self.watchdog, self.watcher):
            if monitor is not None:
                monitor.stop()
        self.stats.flush(force=True)
        self.admission.close()
        self.events.record("stop", "server stopped")
        self.events.close()


def build_state(config: ServeConfig) -> ServerState:
    """Load and verify the artifact (and fallback), then wire the parts together."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog(config.events_db, retention_days=config.retention_days)
    # the operator chose these files: they are verified but need not carry a recorded sha256
    primary = load_verified(config.artifact, 1, threads=config.threads, require_recorded_sha=False)
    fallback = (load_verified(config.fallback, 0, threads=config.threads,
                              require_recorded_sha=False) if config.fallback else None)
    store = VersionStore(config.state_dir / "versions", keep=config.keep)
    slot = ModelSlot(primary, events, store, fallback=fallback, threads=config.threads,
                     max_latency_ms=config.max_latency_ms)
    admission = Admission(config.workers, config.queue, config.max_batch, config.batch_wait_ms)
    watchdog = None
    if config.thermal is not None:
        watchdog = ThermalWatchdog(config.thermal, slot, admission, events,
                                   source=config.temperature_source or auto_temperature)
    watcher = (FolderWatcher(config.watch, slot, config.watch_interval_s) if config.watch else None)
    metrics = Metrics(queue_length=lambda: admission.waiting, in_flight=lambda: admission.in_flight,
                      temperature=lambda: watchdog.last_c if watchdog else None,
                      version=lambda: slot.current.version)
    return ServerState(config, slot, admission, events, MinuteStats(events), metrics, watchdog,
                       watcher, time.time())
