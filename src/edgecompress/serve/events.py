"""The event log: swaps, rollbacks, thermal events and per-minute request statistics in SQLite.

stdlib ``sqlite3`` only, one small file that survives restarts. Writes come from request
threads, the watchdog and the folder watcher, so one connection is shared behind a lock; rows
older than the retention window are deleted as new ones arrive.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("edgecompress")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind);
"""


class EventLog:
    """Append-only events with retention. ``kind`` is e.g. ``swap``, ``rollback``, ``thermal``,
    ``stats`` (one row per minute), ``start``.

    Args:
        path: the SQLite file (``":memory:"`` for a throwaway log).
        retention_days: rows older than this are deleted.
        max_rows: at most this many rows are kept (the oldest go first).
    """

    def __init__(self, path: str | Path, retention_days: float = 30.0, max_rows: int = 100_000):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_days * 86400.0
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers (``edgecompress events``) never block
        self._db.executescript(_SCHEMA)
        self._writes = 0

    def record(self, kind: str, message: str, **data: Any) -> None:
        """Append one event; logging it too, so the server's log and the database agree."""
        log.info("event %s: %s", kind, message)
        payload = json.dumps(data, default=str) if data else None
        with self._lock:
            self._db.execute("INSERT INTO events (ts, kind, message, data) VALUES (?, ?, ?, ?)",
                             (time.time(), kind, message, payload))
            self._writes += 1
            if self._writes % 100 == 1:
                self._prune()

    def _prune(self) -> None:
        self._db.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.retention_s,))
        self._db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                         (self.max_rows,))

    def prune(self) -> None:
        """Apply the retention rules now."""
        with self._lock:
            self._prune()

    def query(self, kind: str | None = None, since: float | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` events (optionally of one ``kind``, after ``since``), oldest first."""
        sql, args = "SELECT ts, kind, message, data FROM events WHERE 1=1", []
        if kind:
            sql, args = sql + " AND kind = ?", [*args, kind]
        if since is not None:
            sql, args = sql + " AND ts >= ?", [*args, since]
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, int(limit)]).fetchall()
        return [{"ts": ts, "kind": k, "message": m, "data": json.loads(d) if d else {}}
                for ts, k, m, d in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MinuteStats:
    """Collects request latencies and errors; writes one ``stats`` event per minute."""

    def __init__(self, events: EventLog, period_s: float = 60.0):
        self.events = events
        self.period_s = period_s
        self._lock = threading.Lock()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self._start, self._latencies, self._errors, self._rejected = now, [], 0, 0

    def add(self, latency_s: float | None, error: bool = False, rejected: bool = False) -> None:
        with self._lock:
            if latency_s is not None:
                self._latencies.append(latency_s)
            self._errors += error
            self._rejected += rejected
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Write the current window when it is a period old (or ``force``) and start a new one."""
        now = time.time()
        with self._lock:
            if not force and now - self._start < self.period_s:
                return
            lat, errors, rejected, start = self._latencies, self._errors, self._rejected, self._start
            self._reset(now)
        if not lat and not errors and not rejected:
            return
        ms = sorted(x * 1000 for x in lat)
        pick = (lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 3)) if ms else (lambda q: None)
        self.events.record("stats", f"{len(ms)} ok, {errors} errors, {rejected} rejected",
                           window_start=start, window_s=round(now - start, 1), requests=len(ms),
                           errors=errors, rejected=rejected, p50_ms=pick(0.5), p99_ms=pick(0.99))


def format_events(rows: list[dict[str, Any]]) -> str:
    """The events as aligned text lines (what ``edgecompress events`` prints)."""
    lines = []
    for row in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["ts"]))
        extra = json.dumps(row["data"], default=str) if row["data"] else ""
        lines.append(f"{stamp}  {row['kind']:<9} {row['message']}  {extra}".rstrip())
    return "\n".join(lines)
