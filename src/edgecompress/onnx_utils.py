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
        model = onnx.load(str(path), load_external_data=False)
        check_external_data(model, Path(path))
        if _external_tensors(model):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(Path(path).parent))
    except (DecodeError, ValueError, OSError, RuntimeError, onnx.checker.ValidationError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{path} is not a readable ONNX model (truncated or corrupt?): "
                            f"{exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ArtifactError(f"{path} holds no ONNX graph (truncated or not an ONNX file)")
    return model


def _external_tensors(model: Any) -> list[Any]:
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == TensorProto.EXTERNAL]


def check_external_data(model: Any, path: Path) -> None:
    """Refuse external-data locations outside the model's folder (absolute, ``..``, or a
    symbolic link leading out): a crafted model must not read other files into its weights."""
    folder = path.parent.resolve()
    for tensor in _external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = folder / location
        if (not location or Path(location).is_absolute() or target.is_symlink()
                or not target.resolve().is_relative_to(folder)):
            raise ArtifactError(f"{path}: tensor {tensor.name!r} keeps its data in "
                                f"{location!r}, outside the model's folder {folder}; refused "
                                f"(an ONNX file may only reference files beside it)")


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


def compact_names(model: Any) -> int:
    """Give the graph's internal tensors short names; drop onnxsim's bookkeeping metadata and
    the intermediate shape annotations (``value_info``), which ONNX Runtime infers again.

    torch and ORT's quantizer name every tensor after its module path plus suffixes
    (``layer1.0.conv2.bias_quantized_zero_point``), and each name is stored at every use: on a
    quantized ResNet-20 that is ~30 kB, a tenth of the file. Graph inputs/outputs and node names
    (the layer names reports refer to) are kept. Graphs with subgraphs are left alone, because a
    subgraph may refer to outer tensors by name. Returns the number of tensors renamed.
    """
    from onnx import AttributeProto

    graph = model.graph
    nested = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    if graph.sparse_initializer or any(a.type in nested for n in graph.node for a in n.attribute):
        return 0
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name  # "" marks an omitted optional input
        if name not in short:
            candidate = f"t{len(short):x}"
            while candidate in keep:
                candidate = "_" + candidate
            short[name] = candidate
        return short[name]

    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    # intermediate shape annotations: ONNX Runtime infers them again at load time
    del graph.value_info[:]
    kept = [p for p in model.metadata_props if not p.key.startswith("onnxsim.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return len(short)
