"""The one view several server processes (``--workers N``) share: which model version serves,
whether the thermal fallback is on, the thermal rate cap and the last temperature.

It is one small JSON file in the state folder, ``active.json``, replaced atomically
(``os.replace``) under an exclusive ``flock``, so a reader sees the old file or the new one,
never half of one, and two writers (a swap on one worker, the watchdog in the supervisor) never
lose each other's change. Each worker compares the file's inode and modification time with the
last ones it applied on every request (one ``stat``, about a microsecond): a swap accepted by
one worker is served by every worker from its next request on. Verification runs once, in the
process that accepted the candidate; the others only check the file's sha256 and load it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: one server process only (ServeConfig refuses --workers > 1)
    fcntl = None  # type: ignore[assignment]

POINTER = "active.json"
LOCK = "active.lock"

Stamp = tuple[int, int, int]  # inode, modification time (ns), size


class SharedState:
    """``active.json`` of one state folder: :meth:`publish` fields, :meth:`read` them back."""

    def __init__(self, state_dir: str | Path):
        self.folder = Path(state_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / POINTER
        self._lock_path = self.folder / LOCK

    def stamp(self) -> Stamp | None:
        """What identifies the file's current content (None: nothing published yet)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self) -> tuple[dict[str, Any], Stamp | None]:
        """The published fields and the stamp read before them ({} before the first publish).

        No lock: the file is replaced whole, so a reader never waits for a swap that is still
        verifying. A write landing between the stamp and the read only makes the next
        :meth:`stamp` differ again, and the reader reads once more."""
        stamp = self.stamp()
        return self._read(), stamp

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (``flock``) for as long as the block runs."""
        with open(self._lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(self, **fields: Any) -> Stamp | None:
        """Merge ``fields`` into the file and replace it atomically; the new stamp."""
        with self.locked():
            return self._write(fields)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[tuple[dict[str, Any], Callable[..., Stamp | None]]]:
        """Hold the lock across a read and a write that depends on it (a swap picks the next
        version): yields the current fields and a ``publish(**fields)`` to call under it."""
        with self.locked():
            yield self._read(), lambda **fields: self._write(fields)

    def _write(self, fields: dict[str, Any]) -> Stamp | None:
        data = {**self._read(), **fields, "published_by": os.getpid()}
        before = self.stamp()
        # the file system's clock ticks coarsely and a freed inode may be reused at once, so
        # every publish sets a modification time past the last one: the stamp always changes
        mtime = max(time.time_ns(), (before[1] + 1) if before else 0)
        fd, tmp = tempfile.mkstemp(prefix=".active-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.utime(tmp, ns=(mtime, mtime))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self.stamp()


def claim(folder: str | Path, name: str) -> IO[str] | None:
    """An exclusive lock on ``folder/name`` for as long as the returned file stays open, or
    None when another process holds it (one worker of several runs the folder watcher)."""
    fh = open(Path(folder) / name, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh
