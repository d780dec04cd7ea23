"""Small helpers on ONNX models shared by the ONNX exporter and the ONNX Runtime runner."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .metadata import METADATA_KEY

WEIGHTS_SHA_KEY = "edgecompress.weights_sha256"


def load_onnx(path: str | Path) -> Any:
    """``onnx.load`` with an ArtifactError naming the file when it is truncated or not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model (truncated or corrupt?): "
                            f"{exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ArtifactError(f"{path} holds no ONNX graph (truncated or not an ONNX file)")
    return model


def weights_sha256(model: Any) -> str:
    """sha256 over the initializers (name, dtype, dims, bytes) in name order.

    Stored inside the file's own metadata, it detects altered weights without hashing itself.
    """
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        digest.update(init.name.encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def read_metadata(model: Any) -> dict[str, Any]:
    props = {p.key: p.value for p in model.metadata_props}
    meta: dict[str, Any] = {}
    if METADATA_KEY in props:
        try:
            meta = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"the model's '{METADATA_KEY}' metadata is not valid JSON") from exc
    if WEIGHTS_SHA_KEY in props:
        meta["weights_sha256"] = props[WEIGHTS_SHA_KEY]
    return meta


def write_metadata(model: Any, metadata: dict[str, Any]) -> None:
    """Set our metadata and the weights' sha256 in ``metadata_props`` (replacing older values)."""
    keep = [p for p in model.metadata_props if p.key not in (METADATA_KEY, WEIGHTS_SHA_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in ((METADATA_KEY, json.dumps(metadata, default=str)),
                       (WEIGHTS_SHA_KEY, weights_sha256(model))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def verify_weights(model: Any, metadata: dict[str, Any], path: str | Path) -> None:
    expected = metadata.get("weights_sha256")
    if expected and weights_sha256(model) != expected:
        raise ArtifactError(f"{path}: the weights do not match the sha256 recorded at export "
                            f"(expected {expected[:16]}…): the file was modified. Re-export it")


def onnx_dtype_name(elem_type: int) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(elem_type))
