"""Reading an ``.ecm`` archive without trusting it.

Before any byte of an ``.ecm`` reaches torch: the archive's members must be the ones a reader
uses (no others, no duplicates), their declared sizes must stay under absolute and relative caps
(zip bombs), each must match the sha256 recorded in the manifest at save time, and an embedded
``torch.export`` program must consist only of raw tensor files and JSON (its loader would
unpickle anything marked ``use_pickle`` with ``weights_only=False``). The checked program is
repacked from exactly the bytes that were checked, so torch never reads anything else.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

from ._io import sha256_bytes
from .errors import ArtifactError

log = logging.getLogger("edgecompress")

# a builder or rebuild hook *named in a file* is imported only from these modules of ours; any
# other code runs only when the caller passes it to DeployableModel.load(builder=...)
TRUSTED_BUILDER_MODULES = ("edgecompress.models",)
TRUSTED_REBUILD_HOOKS = ("edgecompress.quant.simulate:rebuild",)
MAX_TENSOR_ELEMENTS = 1 << 28  # a tensor the structure record may allocate without a saved one

MEMBERS = ("manifest.json", "weights.pt", "float_weights.pt", "calib_samples.pt", "program.pt2")
REQUIRED = ("manifest.json", "weights.pt")
MANIFEST_MAX_BYTES = 32 << 20
# the largest total an archive may unpack to, and how much bigger than the archive itself
# (float weights deflate by ~1.1x, a 90 %-sparse model by ~10x; a zip bomb by 1000x)
MAX_TOTAL_BYTES = int(os.environ.get("EDGECOMPRESS_MAX_ECM_BYTES", 8 << 30))
MAX_RATIO = 100.0
_SLACK = 1 << 20  # tiny archives (a manifest and a few tensors) may deflate better

# what torch.export.save writes (torch 2.5-2.14), and nothing else: raw tensor bytes + JSON
_PROGRAM_MEMBERS = re.compile(
    r"archive/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt)")
_PAYLOAD_NAME = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
# operators the program's graph may call: torch's own operator libraries only
_OP_PREFIXES = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.quantized.",
                "torch.ops.quantized_decomposed.", "torch.ops.torchao.", "_operator.", "math.",
                "torch.ops.higher_order.", "torch._higher_order_ops.", "torch.sym_")


def read_members(path: Path) -> dict[str, bytes]:
    """The members of ``path`` after the allow-list and size checks (raises ArtifactError)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_names([i.filename for i in infos], path, MEMBERS, ".ecm")
            missing = [n for n in REQUIRED if n not in {i.filename for i in infos}]
            if missing:
                raise ArtifactError(f"{path} is not an edgecompress model (.ecm): "
                                    f"{', '.join(missing)} is missing")
            _check_sizes(infos, path.stat().st_size, str(path))
            return {i.filename: _read(zf, i) for i in infos}
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path} is not a readable .ecm file (truncated or corrupt?): "
                            f"{exc}") from exc


def _check_names(names: list[str], path: Any, allowed: Any, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ArtifactError(f"{path}: member {name!r} appears twice in the archive; a "
                                f"reader could pick either copy, so the file is refused")
        seen.add(name)
        ok = allowed.fullmatch(name) if hasattr(allowed, "fullmatch") else name in allowed
        if not ok:
            raise ArtifactError(f"{path}: unexpected member {name!r}; a {what} holds only "
                                f"{_allowed_text(allowed)}. The file was not made by "
                                f"edgecompress, or was altered; nothing from it was loaded")


def _allowed_text(allowed: Any) -> str:
    return ", ".join(allowed) if isinstance(allowed, tuple) else "torch.export's tensor and JSON files"


def _check_sizes(infos: list[zipfile.ZipInfo], archive_bytes: int, where: str) -> None:
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise ArtifactError(f"{where} would unpack to {total:,} bytes, over the limit of "
                            f"{MAX_TOTAL_BYTES:,} (set EDGECOMPRESS_MAX_ECM_BYTES to raise it "
                            f"for a model you trust); refused")
    if total > MAX_RATIO * archive_bytes + _SLACK:
        raise ArtifactError(f"{where} would unpack to {total:,} bytes from {archive_bytes:,} "
                            f"(ratio {total / max(archive_bytes, 1):.0f}, limit {MAX_RATIO:.0f}): "
                            f"a zip bomb, not a model; refused")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.filename == "manifest.json" and info.file_size > MANIFEST_MAX_BYTES:
        raise ArtifactError(f"manifest.json is {info.file_size:,} bytes; a manifest is at most "
                            f"{MANIFEST_MAX_BYTES:,}")
    with zf.open(info) as fh:  # reads at most file_size bytes, then checks the CRC
        data = fh.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ArtifactError(f"{info.filename}: {len(data)} bytes where the archive declares "
                            f"{info.file_size}; the file is corrupt")
    return data


def parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: manifest.json must hold a JSON object")
    return manifest


def member_hashes(files: dict[str, bytes]) -> dict[str, str]:
    """The sha256 of each member, recorded in the manifest at save time."""
    return {name: sha256_bytes(data) for name, data in sorted(files.items())}


def check_hashes(manifest: dict[str, Any], blobs: dict[str, bytes], path: Path,
                 verify: bool) -> bool:
    """True when every member matches its recorded sha256; raise on a mismatch.

    A file without records is *unverified*: refused when ``verify``, else loaded with a warning.
    """
    recorded = manifest.get("sha256")
    members = {n: b for n, b in blobs.items() if n != "manifest.json"}
    if not isinstance(recorded, dict) or not recorded:
        message = (f"{path} carries no sha256 records (saved by edgecompress < 0.2, or its "
                   f"manifest was edited), so its contents cannot be verified")
        if verify:
            raise ArtifactError(f"{message}. If you trust the file, load it with verify=False "
                                f"and save it again to add the records")
        log.warning("%s; loading it unverified because verify=False", message)
        return False
    for name in sorted(set(members) | set(recorded)):
        if name not in members:
            raise ArtifactError(f"{path}: member {name} recorded in the manifest is missing")
        if name not in recorded:
            raise ArtifactError(f"{path}: member {name} has no sha256 record; refused")
        actual = sha256_bytes(members[name])
        if actual != recorded[name]:
            raise ArtifactError(f"{path}: {name} does not match its recorded sha256 (expected "
                                f"{str(recorded[name])[:16]}…, found {actual[:16]}…): the file "
                                f"was modified or corrupted after it was saved, and is refused")
    return True


def checked_program(data: bytes, path: Path) -> bytes:
    """The embedded torch.export program, proved to hold only raw tensors and JSON, repacked
    from the checked bytes (raises ArtifactError naming what was refused)."""
    where = f"{path} (program.pt2)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_names([i.filename for i in infos], where, _PROGRAM_MEMBERS, "torch.export program")
            _check_sizes(infos, len(data), where)
            members = {i.filename: _read(zf, i) for i in infos}
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{where} is not a readable archive: {exc}") from exc
    for kind in ("weights", "constants"):
        config_name = f"archive/data/{kind}/model_{kind}_config.json"
        if config_name in members:
            _check_payload_config(members, config_name, kind, where)
    _check_graph_ops(members.get("archive/models/model.json", b"{}"), where)
    sample = members.get("archive/data/sample_inputs/model.pt")
    if sample is not None:
        safe_tensors(sample, path, "program.pt2/sample_inputs")
    return _repack(members)


def safe_tensors(data: bytes, path: Path, member: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError) as exc:
        raise ArtifactError(f"refused to load {path} ({member}): it holds something other than "
                            f"tensors (a pickled object that could run code) or is corrupt. "
                            f"Nothing from it was executed. Detail: {str(exc)[:300]}") from exc


def _check_payload_config(members: dict[str, bytes], name: str, kind: str, where: str) -> None:
    try:
        config = json.loads(members[name]).get("config", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ArtifactError(f"{where}: {name} is not valid JSON: {exc}") from exc
    for fqn, meta in dict(config).items():
        if not isinstance(meta, dict):
            raise ArtifactError(f"{where}: {name}: entry {fqn!r} is not an object")
        if meta.get("use_pickle"):
            raise ArtifactError(f"{where}: {kind} entry {fqn!r} is marked use_pickle, which "
                                f"torch would unpickle with weights_only=False (that can run "
                                f"code). edgecompress never writes such entries; refused, "
                                f"nothing was executed")
        file = str(meta.get("path_name", ""))
        if not _PAYLOAD_NAME[kind].fullmatch(file) or f"archive/data/{kind}/{file}" not in members:
            raise ArtifactError(f"{where}: {kind} entry {fqn!r} points to {file!r}, which is not "
                                f"a raw tensor file of the archive; refused")


def _check_graph_ops(model_json: bytes, where: str) -> None:
    try:
        graph = json.loads(model_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: models/model.json is not valid JSON: {exc}") from exc
    nodes = (((graph.get("graph_module") or {}).get("graph") or {}).get("nodes") or [])
    for node in nodes:
        target = str(node.get("target", "")) if isinstance(node, dict) else ""
        if not target.startswith(_OP_PREFIXES):
            raise ArtifactError(f"{where}: the graph calls {target!r}, which is not one of "
                                f"torch's operators; refused")


def _repack(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def version_ok(version: Any, ecm_version: int = 1) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= ecm_version


def trusted_builder(name: Any, path: Path) -> Callable[[], Any] | None:
    """The builder a file names, if it is a public callable defined in one of
    :data:`TRUSTED_BUILDER_MODULES`; else None (the model comes from the checked program)."""
    if not name:
        return None
    module, _, attr = str(name).partition(":")
    if module in TRUSTED_BUILDER_MODULES and re.fullmatch(r"[A-Za-z]\w*", attr):
        obj = getattr(importlib.import_module(module), attr, None)
        if callable(obj) and getattr(obj, "__module__", None) == module:
            return obj
    log.warning("%s names the builder %r, which is not one of edgecompress's own (%s), so it "
                "is not imported: a file never chooses what code runs. The model is loaded "
                "from its saved program; pass builder=%r to DeployableModel.load if you trust "
                "that code", path, str(name)[:200], ", ".join(TRUSTED_BUILDER_MODULES),
                str(name)[:200])
    return None


def check_structure(structure: Any, weights: dict[str, Any], path: Path) -> None:
    """Every tensor shape the structure record would allocate must be the shape of the saved
    tensor of that name (or small): a crafted record cannot make the rebuild allocate terabytes."""
    if not isinstance(structure, dict):
        raise ArtifactError(f"{path}: the structure record is not a mapping")
    for name, rec in structure.items():
        for kind in ("params", "buffers"):
            for key, shape in ((rec or {}).get(kind) or {}).items():
                if shape is None:
                    continue
                full = f"{name}.{key}" if name else key
                saved = weights.get(full)
                ok = (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                      and (list(saved.shape) == shape if hasattr(saved, "shape")
                           else math.prod(shape) <= MAX_TENSOR_ELEMENTS))
                if not ok:
                    raise ArtifactError(f"{path}: the structure record gives {full} the shape "
                                        f"{shape!r}, which is not the saved tensor's; the file is "
                                        f"corrupt or crafted")
