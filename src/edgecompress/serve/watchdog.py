"""Thermal watchdog: read a temperature every few seconds; above the policy's limit lower the
request rate or switch to a lighter fallback artifact; go back once it has cooled.

Temperature sources are plain callables returning °C (or None when unreadable), so a board
with its own sensor, or a test, plugs in its own.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from ..runtime.system import cpu_temperature_c
from .admission import Admission
from .events import EventLog
from .periodic import Periodic
from .swap import ModelSlot

log = logging.getLogger("edgecompress")

TemperatureSource = Callable[[], "float | None"]


def sysfs_temperature() -> float | None:
    """Linux thermal zones (Raspberry Pi's ``cpu-thermal``, Jetson's ``CPU-therm``, x86 packages)."""
    return cpu_temperature_c()


def vcgencmd_temperature() -> float | None:
    """Raspberry Pi firmware's ``vcgencmd measure_temp`` (``temp=48.3'C``)."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "measure_temp"], capture_output=True, text=True,
                             timeout=2).stdout
        return float(out.split("=")[1].split("'")[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def psutil_temperature() -> float | None:
    """psutil's sensors (macOS/BSD/Linux hwmon), hottest reading."""
    try:
        import psutil
    except ImportError:
        return None
    read = getattr(psutil, "sensors_temperatures", None)
    temps = read() if read else {}
    values = [t.current for entries in temps.values() for t in entries if t.current]
    return max(values) if values else None


def auto_temperature() -> float | None:
    """The first source that reads on this machine: sysfs, then vcgencmd, then psutil."""
    for source in (sysfs_temperature, vcgencmd_temperature, psutil_temperature):
        value = source()
        if value is not None:
            return value
    return None


@dataclass
class ThermalPolicy:
    """Above ``hot_c`` act; back to normal below ``cool_c`` (hysteresis avoids flapping).

    ``action`` is ``"fallback"`` (serve the fallback artifact) or ``"throttle"`` (admit at most
    ``max_rps`` requests per second).
    """

    hot_c: float = 80.0
    cool_c: float = 70.0
    action: str = "throttle"
    max_rps: float = 5.0
    interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.action not in ("fallback", "throttle"):
            raise ValueError(f"thermal action must be 'fallback' or 'throttle', got {self.action!r}")
        if self.cool_c > self.hot_c:
            raise ValueError(f"cool_c ({self.cool_c}) must not exceed hot_c ({self.hot_c})")


class ThermalWatchdog(Periodic):
    """A daemon thread applying a :class:`ThermalPolicy` to the slot and the admission."""

    label = "thermal watchdog: reading failed"

    def __init__(self, policy: ThermalPolicy, slot: ModelSlot, admission: Admission,
                 events: EventLog, source: TemperatureSource = auto_temperature):
        if policy.action == "fallback" and slot.fallback is None:
            raise ValueError("the thermal policy 'fallback' needs a fallback artifact "
                             "(--fallback PATH); or use action 'throttle'")
        self.policy, self.slot, self.admission, self.events = policy, slot, admission, events
        self.source = source
        self.hot = False
        self.last_c: float | None = None
        self.interval_s = policy.interval_s
        self._start_thread("ec-thermal")

    def step(self) -> None:
        self.check()

    def check(self) -> None:
        """One reading and, when it crosses a threshold, the policy's action."""
        temp = self.source()
        self.last_c = temp
        if temp is None:
            return
        if not self.hot and temp >= self.policy.hot_c:
            self.hot = True
            self._act(True, f"{temp:.1f} °C >= {self.policy.hot_c} °C")
        elif self.hot and temp <= self.policy.cool_c:
            self.hot = False
            self._act(False, f"{temp:.1f} °C <= {self.policy.cool_c} °C")

    def _act(self, hot: bool, reason: str) -> None:
        self.events.record("thermal", ("hot: " if hot else "cool: ") + reason,
                           action=self.policy.action, temperature_c=self.last_c)
        if self.policy.action == "fallback":
            self.slot.use_fallback(hot, reason)
        else:
            self.admission.set_rate(self.policy.max_rps if hot else None)
