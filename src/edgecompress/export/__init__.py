"""Exporters: one module per format, each listed in :data:`edgecompress.formats.FORMATS`."""

from .base import Artifact, Exporter, ExportOptions
from .parity import Parity

__all__ = ["Artifact", "ExportOptions", "Exporter", "Parity"]
