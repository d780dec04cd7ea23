"""``edgecompress serve``: a torch-free HTTP runtime for one artifact on the device.

It serves predictions over REST (FastAPI + uvicorn), reports health and Prometheus metrics,
swaps in new verified models over the air (``POST /model`` or a watched folder) with rollback,
watches the temperature, and keeps an SQLite event log. Install with
``pip install "edgecompress-device[onnx,serve]"`` (no torch) or ``edgecompress[serve]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import ServeConfig, read_token
    from .events import EventLog
    from .server import run
    from .verify import VerificationError, load_verified, write_check
    from .watchdog import ThermalPolicy

_LAZY = {"create_app": ".app", "ServeConfig": ".config", "read_token": ".config",
         "EventLog": ".events", "run": ".server", "VerificationError": ".verify",
         "load_verified": ".verify", "write_check": ".verify", "ThermalPolicy": ".watchdog"}


def __getattr__(name: str) -> Any:  # fastapi loads only when the server is used
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'edgecompress.serve' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = sorted(_LAZY)
