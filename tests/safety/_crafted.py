"""Helpers to craft altered archives for the safety tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path


def rewrite_zip(src: Path, dest: Path, change) -> Path:
    """Copy the zip ``src`` to ``dest`` with ``change(members: dict) -> dict`` applied."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members = change(members)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def unzip_bytes(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def set_manifest(members: dict[str, bytes], **changes) -> dict[str, bytes]:
    manifest = json.loads(members["manifest.json"])
    manifest.update(changes)
    members["manifest.json"] = json.dumps(manifest).encode()
    return members


def rehash(members: dict[str, bytes]) -> dict[str, bytes]:
    """Recompute the manifest's sha256 records, as an attacker who edits the file would."""
    from edgecompress._ecm_archive import member_hashes

    manifest = json.loads(members["manifest.json"])
    manifest["sha256"] = member_hashes({n: b for n, b in members.items() if n != "manifest.json"})
    members["manifest.json"] = json.dumps(manifest).encode()
    return members
