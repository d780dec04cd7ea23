"""Exporters: one module per format, each listed in :data:`edgecompress.formats.FORMATS`."""

from ..artifact import Artifact, Parity
from .base import Exporter, ExportOptions

__all__ = ["Artifact", "ExportOptions", "Exporter", "Parity"]
