"""Progress bars (tqdm) that can be switched off for logs and CI."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled: bool | None = None


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for the whole process (default: on when stderr is a TTY)."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether bars are drawn: :func:`set_progress`, else ``EDGECOMPRESS_PROGRESS``, else TTY.

    A bar redraws itself with carriage returns, so stderr redirected to a file or a CI log
    would get one ever-growing line: without a terminal there are no bars.
    """
    if _enabled is not None:
        return _enabled
    env = os.environ.get("EDGECOMPRESS_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr is not None and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, **kw: Any) -> "tqdm[T]":
    """Wrap ``iterable`` in a tqdm bar labelled ``desc`` (silent when progress is disabled)."""
    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(),
                leave=False, dynamic_ncols=True, **kw)
