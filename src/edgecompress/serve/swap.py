"""Over-the-air model swap: verify a candidate, then switch to it atomically, keeping the old
model when anything fails, and keep the last N versions on disk.

Requests hold a reference to the :class:`LoadedModel` they started on, so a swap never
disturbs one in flight: the old model's runtime is closed when its last request is done.
With several server processes the slot follows the shared view
(:class:`~edgecompress.serve.shared.SharedState`): a swap verifies and publishes under its
lock, and every other process loads what was published before its next request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .._io import atomic_path
from ..errors import EdgeCompressError
from ..metadata import sidecar_path
from .events import EventLog
from .shared import SharedState, Stamp
from .verify import LoadedModel, check_path, load_published, load_verified

log = logging.getLogger("edgecompress")

_VERSION_DIR = re.compile(r"^v(\d{4,})$")


def companions(artifact: Path) -> list[Path]:
    """The files that travel with an artifact: its sidecar metadata, stored samples, manifest."""
    if artifact.is_dir():
        return []  # a folder artifact keeps them inside
    return [p for p in (sidecar_path(artifact), check_path(artifact),
                        artifact.with_name(artifact.name + ".sha256")) if p.exists()]


def read_manifest_sha(artifact: Path) -> str | None:
    """The sha256 in ``<artifact>.sha256`` (``sha256sum`` format), if that file exists."""
    manifest = artifact.with_name(artifact.name + ".sha256")
    if not manifest.exists():
        return None
    text = manifest.read_text().split()
    return text[0].lower() if text else None


class VersionStore:
    """``root/v0002/<artifact>`` … one folder per version that was swapped in (ours to prune)."""

    def __init__(self, root: str | Path, keep: int = 3):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def versions(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if p.is_dir() and (m := _VERSION_DIR.match(p.name))]
        return sorted(found)

    def next_version(self, floor: int = 1) -> int:
        existing = self.versions()
        return max([floor, *(v for v, _ in existing)]) + 1

    def add(self, artifact: Path, version: int) -> Path:
        """Copy the artifact and its companions into a new version folder, atomically."""
        target = self.root / f"v{version:04d}"
        with atomic_path(target) as tmp:
            tmp.mkdir()
            copy = shutil.copytree if artifact.is_dir() else shutil.copy2
            copy(artifact, tmp / artifact.name)
            for extra in companions(artifact):
                shutil.copy2(extra, tmp / extra.name)
        return target / artifact.name

    def discard(self, stored: Path) -> None:
        shutil.rmtree(stored.parent, ignore_errors=True)

    def prune(self, in_use: set[Path]) -> list[int]:
        """Delete all but the newest ``keep`` versions, never one that is being served."""
        removed = []
        versions = self.versions()
        for version, folder in versions[:-self.keep] if len(versions) > self.keep else []:
            if any(folder in p.parents for p in in_use):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(version)
        return removed

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder for an upload; removed afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class ModelSlot:
    """The model being served, an optional lighter fallback, and the swap between versions."""

    def __init__(self, primary: LoadedModel, events: EventLog, store: VersionStore,
                 fallback: LoadedModel | None = None, threads: int | None = None,
                 max_latency_ms: float | None = None, shared: SharedState | None = None):
        self.primary = primary
        self.fallback = fallback
        self.events = events
        self.store = store
        self.threads = threads
        self.max_latency_ms = max_latency_ms
        self.on_fallback = False
        self._lock = threading.Lock()  # guards which model is current
        self._swap_lock = threading.Lock()  # one swap (or sync) at a time
        self.shared = shared
        self.applied: Stamp | None = None  # the shared view this slot serves
        self.on_change: Callable[[dict[str, Any]], None] | None = None  # rate, temperature

    # -- several processes -------------------------------------------------------------------
    def stale(self) -> bool:
        """True when another process published a change this slot does not serve yet."""
        return self.shared is not None and self.shared.stamp() != self.applied

    def sync(self) -> None:
        """Serve what the shared view says: a version another process verified and published
        is loaded here (its sha256 checked), the fallback flag and the thermal fields followed."""
        if self.shared is None:
            return
        with self._swap_lock:
            fields, stamp = self.shared.read()
            try:
                self._apply(fields)
            except (EdgeCompressError, OSError, ValueError) as exc:
                # marked as applied all the same: a broken version folder must not be reloaded
                # on every request; this process keeps serving what it had, and says so
                self.events.record("sync_failed", f"process {os.getpid()} keeps version "
                                   f"{self.primary.version}: {exc}", published=fields.get("version"))
            self.applied = stamp

    def _apply(self, fields: dict[str, Any]) -> None:
        version = fields.get("version")
        if version is not None and version != self.primary.version:
            new = load_published(Path(fields["path"]), version, fields["sha256"],
                                 self.threads, fields.get("verification") or {})
            with self._lock:
                old, self.primary = self.primary, new
            old.retire()
            log.info("now serving version %d (published by process %s)", version,
                     fields.get("published_by"))
        with self._lock:
            self.on_fallback = bool(fields.get("on_fallback")) and self.fallback is not None
        if self.on_change is not None:
            self.on_change(fields)

    def published(self) -> dict[str, Any]:
        """What the shared view holds about the primary model."""
        p = self.primary
        return {"version": p.version, "path": str(p.path.resolve()), "sha256": p.sha256,
                "verification": p.verification}

    @property
    def current(self) -> LoadedModel:
        return self.fallback if self.on_fallback and self.fallback else self.primary

    @contextlib.contextmanager
    def acquire(self) -> Iterator[LoadedModel]:
        """The current model, held for the duration of one request."""
        with self._lock:
            model = self.current.enter()
        try:
            yield model
        finally:
            model.leave()

    def use_fallback(self, on: bool, reason: str) -> bool:
        """Serve the fallback (``on``) or the primary again; False when there is no fallback."""
        if self.fallback is None or on == self.on_fallback:
            return self.fallback is not None
        with self._lock:
            self.on_fallback = on
        self.events.record("fallback" if on else "primary", reason,
                           serving=str(self.current.path))
        return True

    def swap(self, candidate: Path, expected_sha256: str | None = None,
             source: str = "upload") -> LoadedModel:
        """Verify ``candidate`` and serve it; on any failure keep the current model and raise."""
        shared = self.shared.transaction() if self.shared else contextlib.nullcontext(({}, None))
        with self._swap_lock, shared as (fields, publish):
            if fields:  # another process may have swapped since: number after its version
                self._apply(fields)
            version = self.store.next_version(self.primary.version)
            stored = self.store.add(candidate, version)
            try:
                new = load_verified(stored, version, threads=self.threads,
                                    expected_sha256=expected_sha256,
                                    max_latency_ms=self.max_latency_ms)
            except (EdgeCompressError, OSError, ValueError) as exc:
                self.store.discard(stored)
                self.events.record("rollback", f"kept version {self.primary.version}: {exc}",
                                   candidate=candidate.name, source=source,
                                   kept=str(self.primary.path))
                raise
            with self._lock:
                old, self.primary = self.primary, new
            if publish is not None:
                self.applied = publish(**self.published())
            old.retire()
            removed = self.store.prune({self.primary.path, *(
                [self.fallback.path] if self.fallback else [])})
            self.events.record("swap", f"version {old.version} -> {new.version} ({candidate.name})",
                               source=source, sha256=new.sha256, pruned=removed,
                               verification=new.verification)
            return new

    def describe(self) -> dict[str, Any]:
        return {"serving": "fallback" if self.on_fallback and self.fallback else "primary",
                "versions_kept": [v for v, _ in self.store.versions()],
                "fallback": str(self.fallback.path) if self.fallback else None}
