"""Integrity of exported artifacts, and crafted artifacts of the other formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgecompress as ec
from edgecompress.errors import ArtifactError

from ._crafted import rehash, rewrite_zip


def _copy(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / src.name
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)
        side = src.with_name(src.name + ".json")
        if side.exists():
            shutil.copy(side, dest.with_name(dest.name + ".json"))
    return dest


@pytest.mark.parametrize("fmt", ["tflite", "torchscript"])
def test_deleted_sidecar_makes_the_file_unverified(artifacts, tmp_path, fmt, caplog):
    if fmt not in artifacts:
        pytest.skip(f"{fmt} is not installed here")
    path = _copy(artifacts[fmt], tmp_path)
    assert ec.load(path).verified is True
    path.with_name(path.name + ".json").unlink()
    runner = ec.load(path)
    assert runner.verified is False and "no integrity record" in caplog.text
    with pytest.raises(ArtifactError, match="refused because verify=True"):
        ec.load(path, verify=True)


def test_onnx_without_record_is_unverified(artifacts, tmp_path):
    import onnx

    model = onnx.load(str(artifacts["onnx"]))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    assert ec.load(path).verified is False
    with pytest.raises(ArtifactError, match="no integrity record"):
        ec.load(path, verify=True)


@pytest.mark.parametrize("fmt", ["tflite", "torchscript", "ncnn", "onnx"])
def test_one_flipped_byte_is_caught(artifacts, tmp_path, fmt):
    if fmt not in artifacts:
        pytest.skip(f"{fmt} is not installed here")
    path = _copy(artifacts[fmt], tmp_path)
    target = path / "model.bin" if path.is_dir() else path
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # weights sit at the end of every one of these files
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        ec.load(path)


@pytest.mark.parametrize("text", ["garbage\x00\xff", "7767517\n999999999 999999999\n",
                                  "7767517\n2 2\nInput in0 0 1 in0\nConvolution c 1 1 in0 out0 "
                                  "0=-5 1=3 6=-100\n",
                                  "7767517\n2 1\nInput in0 0 1 in0\nReLU r 5 1 a b c d e out0\n"])
def test_malformed_ncnn_param_is_a_clear_error(artifacts, tmp_path, text):
    if "ncnn" not in artifacts:
        pytest.skip("ncnn is not installed here")
    folder = _copy(artifacts["ncnn"], tmp_path)
    (folder / "model.param").write_text(text)
    with pytest.raises(ArtifactError, match="sha256"):
        ec.load(folder)
    with pytest.raises(ArtifactError, match="cannot parse"):
        ec.load(folder, verify=False)


def _onnx_with_external(folder: Path, location: str) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4,), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"0123456789abcdef")
    folder = tmp_path / "art"
    folder.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "w.bin"}[kind]
    if kind == "symlink":
        (folder / "w.bin").symlink_to(secret)
    path = _onnx_with_external(folder, location)
    with pytest.raises(ArtifactError, match="outside the model's folder"):
        ec.load(path, verify=False)


def test_onnx_external_data_beside_the_model_still_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    runner = ec.load(_onnx_with_external(tmp_path, "w.bin"), verify=False)
    assert np.array_equal(runner(np.zeros((1, 4), np.float32)), [[0, 1, 2, 3]])


def test_huge_input_shape_in_a_sidecar_is_refused(artifacts, tmp_path):
    path = _copy(artifacts["torchscript"], tmp_path)
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    meta["input"]["shape"] = [1, 1, 1_000_000, 1_000_000]
    side.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a usable input shape"):
        ec.load(path)


def test_huge_structure_shape_with_a_trusted_builder_is_refused(tmp_path):
    from edgecompress.deployable import DeployableModel, InputSpec
    from edgecompress.models import small_cnn

    dm = DeployableModel(small_cnn(width=8).eval(), InputSpec((1, 1, 16, 16)))
    path = dm.save(tmp_path / "m.ecm", builder="edgecompress.models:small_cnn", portable=False)

    def change(m):
        manifest = json.loads(m["manifest.json"])
        first = next(k for k, v in manifest["structure"].items() if v["params"].get("weight"))
        manifest["structure"][first]["params"]["weight"] = [100_000, 100_000, 3, 3]
        m["manifest.json"] = json.dumps(manifest).encode()
        return rehash(m)
    bad = rewrite_zip(path, tmp_path / "bad.ecm", change)
    with pytest.raises(ArtifactError, match="not the saved tensor's"):
        ec.DeployableModel.load(bad)
