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
from .errors import ArtifactError, ConfigError

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
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            raise ArtifactError(f"metadata file {side} is {side.stat().st_size:,} bytes; at most "
                                f"{MAX_SIDECAR_BYTES:,} are read")
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"metadata file {side} is unreadable: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"metadata file {side} must hold a JSON object")
    check_input_shape(meta.get("input"), side)
    return meta


MAX_SIDECAR_BYTES = 16 << 20
MAX_SAMPLE_VALUES = 1 << 28  # runners allocate one sample of the recorded input shape


def check_input_shape(spec: Any, where: Any) -> None:
    """Refuse a recorded input shape no real model takes (a crafted one would make a runner
    allocate terabytes for its probe input)."""
    if spec is None:
        return
    shape = spec.get("shape") if isinstance(spec, dict) else None
    import math

    if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
            or math.prod(shape[1:]) > MAX_SAMPLE_VALUES):
        raise ArtifactError(f"{where}: input shape {shape!r} is not a usable input shape (1 to "
                            f"8 positive integers, at most {MAX_SAMPLE_VALUES:,} values per "
                            f"sample); the file is corrupt or crafted")


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


def artifact_format(path: Path) -> str | None:
    """The edgecompress format of the artifact at ``path``, or None when it is not one of ours."""
    side = sidecar_path(path)
    if side.is_file() and not side.is_symlink():
        try:
            fmt = json.loads(side.read_text()).get("format")
            if isinstance(fmt, str):
                return fmt
        except (OSError, ValueError, AttributeError):
            return None
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _onnx_format(path)
    if path.is_file() and path.suffix.lower() == ".ecm":
        return _ecm_format(path)
    return None


def _onnx_format(path: Path) -> str | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        fmt = json.loads(props.get(METADATA_KEY, "{}")).get("format")
        return fmt if isinstance(fmt, str) else None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not one of ours
        return None


def _ecm_format(path: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("manifest.json")
            if info.file_size > 32 << 20:
                return None
            manifest = json.loads(zf.read(info))
        return "torch" if manifest.get("format") == "edgecompress-model" else None
    except Exception:  # noqa: BLE001
        return None


def check_destination(path: Path, fmt: str, overwrite: bool) -> bool:
    """Refuse to write ``fmt`` at ``path`` when something is there that must survive; return
    whether the write will replace what is there.

    Nothing there (or an empty folder): fine. An edgecompress ``fmt`` artifact: replaced only
    with ``overwrite``, and a folder artifact only if it holds nothing but what the export
    wrote. Anything else (a user's file or folder, another format's artifact, a symbolic
    link): never.
    """
    from ._io import refuse_symlink

    refuse_symlink(path)
    side = sidecar_path(path) if not path.is_dir() else None
    if not path.exists():
        if side is not None and side.exists() and not overwrite:
            raise ConfigError(f"{side} already exists (the metadata file an export to {path} "
                              f"writes); pass overwrite=True to replace it, or choose another path")
        return False
    if path.is_dir() and not any(path.iterdir()):
        return True
    found = artifact_format(path)
    what = "folder" if path.is_dir() else "file"
    if found != fmt:
        kind = f"an edgecompress {found} artifact" if found else f"a {what} edgecompress did not write"
        raise ConfigError(f"{path} already exists and is {kind}, not an edgecompress {fmt} "
                          f"artifact; refusing to replace it (nothing was changed). Choose "
                          f"another path, or move it away yourself")
    if not overwrite:
        raise ConfigError(f"{path} already holds an edgecompress {fmt} artifact; pass "
                          f"overwrite=True to replace it (the new one is written beside it and "
                          f"swapped in only after it is complete and verified)")
    if path.is_dir():
        _refuse_foreign_files(path)
    return True


def _refuse_foreign_files(folder: Path) -> None:
    """An artifact folder holding files the export did not write is not ours to delete."""
    recorded = set((read_sidecar(folder).get("weights_sha256") or {}))
    ours = recorded | {"edgecompress.json", "pnnx", "build_engine.sh", "build_engine.py"}
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours)
    if foreign:
        raise ConfigError(f"{folder} is an edgecompress artifact folder but also holds "
                          f"{', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}, which "
                          f"the export did not write; refusing to replace it (nothing was "
                          f"changed). Move those files out, or choose another path")
