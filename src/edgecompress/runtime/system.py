"""System status where the OS exposes it: CPU temperature, throttling, CPU load, memory.

Readings come from Linux's /sys and /proc (Raspberry Pi and Jetson included); anything the
machine does not expose is left out rather than guessed.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_CPU_ZONE_HINTS = ("cpu", "x86_pkg", "soc", "cpu-thermal", "tcpu", "coretemp")


def cpu_temperature_c() -> float | None:
    """Hottest CPU-like thermal zone in °C (any zone when none is labelled as CPU)."""
    zones = sorted(Path("/sys/class/thermal").glob("thermal_zone*"))
    readings: list[tuple[bool, float]] = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            temp = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        readings.append((any(h in kind for h in _CPU_ZONE_HINTS), temp))
    cpu = [t for is_cpu, t in readings if is_cpu] or [t for _, t in readings]
    return max(cpu) if cpu else None


def throttling() -> dict[str, Any] | None:
    """Throttling state: Raspberry Pi's ``vcgencmd get_throttled`` or Linux throttle counters."""
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                                 timeout=2).stdout.strip()
            value = int(out.split("=")[1], 16)
            return {"source": "vcgencmd", "raw": hex(value),
                    "throttled_now": bool(value & 0x4), "throttled_since_boot": bool(value & 0x40000),
                    "under_voltage_now": bool(value & 0x1)}
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    counts = 0
    found = False
    for f in Path("/sys/devices/system/cpu").glob("cpu*/thermal_throttle/*_throttle_count"):
        try:
            counts += int(f.read_text().strip())
            found = True
        except (OSError, ValueError):
            continue
    return {"source": "thermal_throttle", "throttle_events": counts} if found else None


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def cpu_percent(interval: float = 0.1) -> float | None:
    """Whole-machine CPU use over ``interval`` seconds, from /proc/stat."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(interval)
    b = _cpu_times()
    if b is None or b[0] == a[0]:
        return None
    return 100.0 * (1 - (b[1] - a[1]) / (b[0] - a[0]))


def memory_mb() -> dict[str, float] | None:
    """Total and used RAM in MB, from /proc/meminfo."""
    try:
        info = {line.split(":")[0]: int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line}
    except (OSError, ValueError, IndexError):
        return None
    total = info.get("MemTotal", 0) / 1024
    avail = info.get("MemAvailable", info.get("MemFree", 0)) / 1024
    return {"total_mb": round(total, 1), "used_mb": round(total - avail, 1)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def system_status(cpu_interval: float = 0.1) -> dict[str, Any]:
    """Everything readable about the machine's state now; unreadable entries are omitted."""
    status: dict[str, Any] = {"cpu_count": os.cpu_count(), "machine": os.uname().machine}
    for key, value in (("cpu_temp_c", cpu_temperature_c()), ("throttling", throttling()),
                       ("cpu_percent", cpu_percent(cpu_interval)), ("memory", memory_mb())):
        if value is not None:
            status[key] = value
    model = Path("/proc/device-tree/model")
    if model.exists():
        try:
            status["board"] = model.read_text().strip("\x00\n ")
        except OSError:
            pass
    return status
