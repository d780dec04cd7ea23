"""Exceptions raised by edgecompress.

Every error says what was wrong, what was expected and what to do. They all derive from
:class:`EdgeCompressError` so callers can catch the library's errors in one place.
"""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class of every error raised on purpose by edgecompress."""


class ConfigError(EdgeCompressError, ValueError):
    """A pass, exporter or recipe option has a bad value (raised at construction time)."""


class DataError(EdgeCompressError, ValueError):
    """Input data is unusable: empty, wrong dtype or shape, NaN/Inf, unreadable files."""


class ChainError(EdgeCompressError, TypeError):
    """A pipeline's passes do not fit together (one pass cannot take what the previous gives)."""


class PassError(EdgeCompressError, RuntimeError):
    """A pass failed while running; ``stage`` names it."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage


class ExportError(EdgeCompressError, RuntimeError):
    """An export could not produce a faithful artifact."""


class ParityError(ExportError):
    """An artifact's outputs differ from the reference model beyond tolerance."""


class ArtifactError(EdgeCompressError, ValueError):
    """An artifact file is missing, truncated, corrupt, tampered with or of an unknown format."""


class WriteError(EdgeCompressError, OSError):
    """Writing a file failed for a reason outside edgecompress (full disk, read-only folder);
    the message names the path and the cause, and nothing was left at the destination."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


class InputError(EdgeCompressError, ValueError):
    """A runner was called with an input of the wrong shape or dtype."""


class MissingExtraError(EdgeCompressError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, extra: str, module: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'edgecompress[{extra}]'"
        )
        self.extra = extra
        self.module = module
