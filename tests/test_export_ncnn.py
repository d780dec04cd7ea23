"""ncnn export end to end on real digits models: pnnx → .param/.bin → ncnn runner → parity."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.export.verify import tolerance_for

pytest.importorskip("ncnn", reason="the ncnn package is not installed (pip install 'edgecompress[ncnn]')")
pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'edgecompress[ncnn]')")

# one thread: ncnn's OpenMP workers crawl when other processes share the two cores
FAST = {"benchmark_runs": 0, "parity_samples": 128, "threads": 1}


def _deployable(model: torch.nn.Module, data: ec.DataBundle) -> ec.DeployableModel:
    return ec.Pipeline([], measure=False).run(model, data)


@pytest.fixture(scope="module")
def cnn_folder(cnn_dm, tmp_path_factory):
    path = tmp_path_factory.mktemp("ncnn") / "cnn_ncnn"
    cnn_dm.export("ncnn", path, **FAST)
    return path


def _torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("which", ["trained_cnn", "trained_resnet"])
def test_fp32_and_fp16_parity_through_ec_load(which, request, digits, tmp_path):
    model = request.getfixturevalue(which)
    dm = _deployable(model, digits)
    x = digits.samples("val", 96)
    ref = _torch_logits(dm.model, x)
    sizes = {}
    for fp16 in (False, True):
        precision = "fp16" if fp16 else "fp32"
        path = tmp_path / f"{which}_{precision}"
        art = dm.export("ncnn", path, fp16=fp16, **FAST)
        assert art.precision == precision
        assert art.parity is not None and art.parity.passed, str(art.parity)
        assert art.accuracy is not None and art.accuracy > 0.85  # trained to >90% in torch
        with ec.load(path, threads=1) as runner:
            assert type(runner).__name__ == "NcnnRunner"
            assert runner.inputs[0].shape == (1, 1, 16, 16)  # ncnn runs one sample at a time
            out = runner(x.numpy())
        rel, min_agree = tolerance_for(precision)
        scale = max(1.0, float(np.abs(ref).max()))
        assert out.shape == ref.shape
        assert float(np.abs(out - ref).max()) <= rel * scale
        assert (out.argmax(1) == ref.argmax(1)).mean() >= min_agree
        if not fp16:  # fp32 ncnn must be far closer than the fp32 tolerance demands
            assert float(np.abs(out - ref).max()) < 1e-4 * scale
        sizes[precision] = (path / "model.bin").stat().st_size
    # fp16 weights really are stored in half precision: the .bin roughly halves
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_folder_holds_only_ncnn_files_and_metadata(cnn_folder, cnn_dm):
    assert sorted(p.name for p in cnn_folder.iterdir()) == ["edgecompress.json", "model.bin",
                                                           "model.param"]
    meta = json.loads((cnn_folder / "edgecompress.json").read_text())
    assert meta["format"] == "ncnn" and meta["precision"] == "fp32"
    assert set(meta["weights_sha256"]) == {"model.param", "model.bin"}
    assert meta["input"]["shape"] == [1, 1, 16, 16]
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["parity"]["passed"] is True
    assert meta["ncnn_input"] in (cnn_folder / "model.param").read_text()


def test_batches_are_run_sample_by_sample(cnn_folder, digits):
    x = digits.samples("val", 5).numpy()
    with ec.load(cnn_folder, threads=1) as runner:
        batched = runner(x)
        single = np.concatenate([runner(x[i:i + 1]) for i in range(5)])
        with pytest.raises(ec.InputError, match="dimension 2 must be 16"):
            runner(np.zeros((1, 1, 8, 16), np.float32))
    np.testing.assert_array_equal(batched, single)


def test_sha256_mismatch_is_refused(cnn_folder, tmp_path):
    copy_dir = tmp_path / "tampered"
    shutil.copytree(cnn_folder, copy_dir)
    data = bytearray((copy_dir / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy_dir / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ec.ArtifactError, match="sha256"):
        ec.load(copy_dir)


def test_param_without_bin_is_a_clear_error(cnn_folder, tmp_path):
    with_meta = tmp_path / "with_meta"
    shutil.copytree(cnn_folder, with_meta)
    (with_meta / "model.bin").unlink()
    with pytest.raises(ec.ArtifactError, match="model.bin"):
        ec.load(with_meta)
    bare = tmp_path / "bare"  # no metadata: the runner itself must explain what is missing
    bare.mkdir()
    shutil.copy(cnn_folder / "model.param", bare / "model.param")
    with pytest.raises(ec.ArtifactError, match="not its weights model.bin"):
        ec.load(bare)


def test_truncated_or_corrupt_files_are_clear_errors(cnn_folder, tmp_path):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(cnn_folder / "model.param", truncated / "model.param")
    (truncated / "model.bin").write_bytes((cnn_folder / "model.bin").read_bytes()[:500])
    with pytest.raises(ec.ArtifactError, match="truncated"):
        ec.load(truncated)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.param").write_text("not an ncnn graph\n")
    (garbage / "model.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ec.ArtifactError, match="cannot parse"):
        ec.load(garbage)


def test_path_with_suffix_is_refused(cnn_dm, tmp_path):
    with pytest.raises(ec.ConfigError, match="folder"):
        cnn_dm.export("ncnn", tmp_path / "model.param", **FAST)


def test_int8_recipe_refused_then_float_fallback_recorded(cnn_dm, tmp_path, digits):
    dm = copy.copy(cnn_dm)
    dm.quant_recipe = ec.StaticRecipe(calib_samples=digits.samples("val", 16))
    dm.float_model = cnn_dm.model
    with pytest.raises(ec.ExportError, match="Formats that can: .*onnx") as err:
        dm.export("ncnn", tmp_path / "int8_ncnn", **FAST)
    assert "allow_float_fallback=True" in str(err.value)
    assert not (tmp_path / "int8_ncnn").exists()  # nothing half-written
    art = dm.export("ncnn", tmp_path / "fallback_ncnn", allow_float_fallback=True, **FAST)
    assert art.precision == "fp32" and art.parity is not None and art.parity.passed
    meta = json.loads((tmp_path / "fallback_ncnn" / "edgecompress.json").read_text())
    assert "not realised" in meta["float_fallback"]
    assert meta["quant_recipe"]["scheme"] == "static"


def test_bad_option_is_refused_before_anything_runs(cnn_dm, tmp_path):
    with pytest.raises(ec.ConfigError, match="optlevel"):
        cnn_dm.export("ncnn", tmp_path / "x_ncnn", optlevel=5)
    assert not (tmp_path / "x_ncnn").exists()


def test_structured_pruned_model_exports_smaller_with_parity(trained_resnet, digits, tmp_path):
    dense = _deployable(copy.deepcopy(trained_resnet), digits)
    dense_art = dense.export("ncnn", tmp_path / "dense_ncnn", **FAST)
    pruned = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=False).run(
        trained_resnet, digits)
    art = pruned.export("ncnn", tmp_path / "pruned_ncnn", **FAST)
    assert art.parity is not None and art.parity.passed, str(art.parity)
    assert art.parity.max_abs_diff < 1e-4 * max(1.0, float(np.abs(_torch_logits(
        pruned.model, digits.samples("val", 64))).max()))
    # channels were really removed: the ncnn weights shrink with the torch parameters
    ratio = (tmp_path / "pruned_ncnn" / "model.bin").stat().st_size / \
        (tmp_path / "dense_ncnn" / "model.bin").stat().st_size
    params = sum(p.numel() for p in pruned.model.parameters()) / \
        sum(p.numel() for p in trained_resnet.parameters())
    assert ratio < 0.8 and abs(ratio - params) < 0.05
    assert dense_art.parity is not None and dense_art.parity.passed


def test_export_to_a_relative_path(cnn_dm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    art = cnn_dm.export("ncnn", "out/model_ncnn", benchmark_runs=0)
    assert (tmp_path / "out/model_ncnn/model.param").is_file() and art.parity.passed
    assert ec.load("out/model_ncnn")(cnn_dm.sample_inputs(4).numpy()).shape == (4, 10)
