"""``GET /health``: is a model loaded, which one, and the machine's state (CPU, memory,
temperature, throttling) as the OS reports it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..runtime.system import cpu_percent, cpu_temperature_c, memory_mb, throttling


def process_rss_mb() -> float | None:
    """Resident memory of this process now (not the peak), from /proc."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def health(state: Any) -> dict[str, Any]:
    model = state.slot.current
    temp, hot = state.thermal()
    temp = temp if temp is not None else cpu_temperature_c()
    return {
        "status": "degraded" if hot else "ok",
        "model_loaded": model is not None,
        "model": model.path.name, "version": model.version, "sha256": model.sha256,
        "format": model.runner.format, "serving": state.slot.describe()["serving"],
        "uptime_s": round(time.time() - state.started_at, 1),
        "cpu_percent": cpu_percent(0.05), "cpu_count": os.cpu_count(),
        "memory": memory_mb(), "process_rss_mb": process_rss_mb(),
        "temperature_c": temp, "throttling": throttling(), "thermal_hot": hot,
        "rate_limit_rps": state.admission.rate,
        "in_flight": state.admission.in_flight, "queue_length": state.admission.waiting,
        "workers": state.config.workers, "pid": os.getpid(),
        "infer_threads": state.admission.workers, "queue_limit": state.admission.queue,
    }
