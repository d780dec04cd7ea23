"""A daemon thread that runs one step every few seconds until stopped (watchdog, folder watcher)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("edgecompress")


class Periodic:
    """Calls :meth:`step` every :attr:`interval_s` seconds on a daemon thread.

    A step that raises is logged and the loop goes on: a sensor hiccup or a bad file must not end
    the watch. Subclasses set ``interval_s`` and ``label`` and implement ``step``.
    """

    interval_s: float = 5.0
    label: str = "periodic task"

    def _start_thread(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def step(self) -> object:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # never started: nothing to wait for
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive one failed step
                log.warning("%s: %s", self.label, exc)
            self._stop.wait(self.interval_s)
