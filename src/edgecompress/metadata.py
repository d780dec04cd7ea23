"""Artifact metadata: what travels with every exported file so a runtime can use it alone.

The same dictionary is stored in each format's own place (ONNX ``metadata_props``, a JSON file
beside directory formats, a sidecar ``<file>.json`` for the others): input spec, preprocessing,
class names, quantization recipe, stage history, edgecompress version, parity, and the sha256
of the weights so :func:`edgecompress.load` can refuse a file that was altered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._io import atomic_write_bytes, sha256_file
from .errors import ArtifactError

METADATA_KEY = "edgecompress"
SIDECAR_SUFFIX = ".json"


def sidecar_path(path: str | Path) -> Path:
    """``model.tflite`` → ``model.tflite.json``; a directory keeps ``edgecompress.json`` inside."""
    p = Path(path)
    return p / "edgecompress.json" if p.is_dir() else p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | Path, metadata: dict[str, Any], weight_files: list[Path]) -> Path:
    """Write metadata with the sha256 of each weight file into the sidecar JSON, atomically."""
    meta = dict(metadata)
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    meta["weights_sha256"] = {str(f.relative_to(root)): sha256_file(f) for f in weight_files}
    side = sidecar_path(path)
    atomic_write_bytes(side, json.dumps(meta, indent=2, default=str).encode())
    return side


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar metadata of an artifact ({} when there is none)."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"metadata file {side} is unreadable: {exc}") from exc


def verify_sidecar(path: str | Path, metadata: dict[str, Any]) -> None:
    """Raise ArtifactError when a weight file's sha256 differs from the one recorded."""
    recorded = metadata.get("weights_sha256") or {}
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    for name, expected in recorded.items():
        f = root / name
        if not f.exists():
            raise ArtifactError(f"{path}: weight file {f} listed in its metadata is missing")
        actual = sha256_file(f)
        if actual != expected:
            raise ArtifactError(f"{f} does not match its recorded sha256 (expected {expected[:16]}…, "
                                f"found {actual[:16]}…): the file was modified or corrupted "
                                f"after export. Re-export it")
