"""A watched folder: an artifact dropped there (with its sidecar, stored samples and optional
``<name>.sha256`` manifest) is verified and swapped in, as ``POST /model`` would.

Polling, not inotify: it works on every filesystem a device mounts (SD cards, NFS, USB sticks).
A file is taken once its size and modification time stayed the same for one interval, so a
copy still in progress is never loaded. Files in the folder are only read, never moved or deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EdgeCompressError
from ..formats import format_for_path
from .periodic import Periodic
from .swap import ModelSlot, companions, read_manifest_sha

log = logging.getLogger("edgecompress")

_COMPANION_SUFFIXES = (".json", ".npz", ".sha256")


def candidates(folder: Path) -> list[Path]:
    """Artifacts in ``folder`` (files of a known format, ncnn folders), companions excluded."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or (p.is_file() and p.suffix in _COMPANION_SUFFIXES):
            continue
        try:
            format_for_path(p)
        except EdgeCompressError:
            continue
        found.append(p)
    return found


def _signature(p: Path) -> tuple[float, int]:
    # the companions count: a sidecar copied after its artifact is part of the same update
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p, *companions(p)]
    stats = [f.stat() for f in files]
    return max((s.st_mtime for s in stats), default=0.0), sum(s.st_size for s in stats)


class FolderWatcher(Periodic):
    """Polls ``folder`` every ``interval_s`` seconds and swaps in each new, settled artifact."""

    label = "model folder watcher"

    def __init__(self, folder: str | Path, slot: ModelSlot, interval_s: float = 2.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.slot = slot
        self.interval_s = interval_s
        self._seen: dict[Path, tuple[float, int]] = {}
        self._pending: dict[Path, tuple[float, int]] = {}
        # what is already there when the server starts is not an update
        for p in candidates(self.folder):
            self._seen[p] = _signature(p)
        self._start_thread("ec-watch")

    def step(self) -> None:
        self.poll()

    def poll(self) -> list[Path]:
        """One scan; returns the artifacts it tried to swap in."""
        tried = []
        for p in candidates(self.folder):
            sig = _signature(p)
            if self._seen.get(p) == sig:
                continue
            if self._pending.get(p) != sig:  # changed since the last scan: wait for it to settle
                self._pending[p] = sig
                continue
            self._pending.pop(p, None)
            self._seen[p] = sig
            tried.append(p)
            try:
                self.slot.swap(p, expected_sha256=read_manifest_sha(p), source="watch")
            except (EdgeCompressError, OSError, ValueError) as exc:
                log.warning("watched artifact %s was not swapped in: %s", p.name, exc)
        return tried
