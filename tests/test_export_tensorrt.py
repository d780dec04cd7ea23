"""TensorRT export: what runs without TensorRT here (build bundle, trtexec command, errors,
option checks), and the real engine build + run, skipped with a reason where TensorRT or a GPU
is missing."""

from __future__ import annotations

import copy
import json
import py_compile
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress._extras import available
from edgecompress.export.tensorrt import build_engine, check_symmetric_int8

HAS_TRT = available("tensorrt")
HAS_GPU = torch.cuda.is_available()
FAST = {"benchmark_runs": 0, "parity_samples": 128, "threads": 1}


@pytest.fixture(scope="module")
def int8_dm(cnn_dm, digits) -> ec.DeployableModel:
    """A hand-made static INT8 recipe on the trained CNN (the simulated model is the float one)."""
    dm = copy.copy(cnn_dm)
    dm.quant_recipe = ec.StaticRecipe(calib_samples=digits.calibration_inputs(128))
    dm.float_model = cnn_dm.model
    return dm


@pytest.fixture(scope="module")
def fp32_bundle(cnn_dm, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "cnn_trt"
    art = cnn_dm.export("tensorrt", path, build="device", min_batch=1, opt_batch=4, max_batch=16,
                        workspace_mb=512, **FAST)
    return path, art


def _command(path) -> str:
    return json.loads((path / "edgecompress.json").read_text())["trtexec_command"]


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the missing-package error "
                                    "cannot occur")
def test_build_here_without_tensorrt_says_what_to_do(cnn_dm, tmp_path):
    with pytest.raises(ec.MissingExtraError) as err:
        cnn_dm.export("tensorrt", tmp_path / "model.engine", **FAST)
    assert "edgecompress[tensorrt]" in str(err.value) and "build='device'" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_runner_without_tensorrt_is_a_clear_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ec.MissingExtraError, match="edgecompress\\[tensorrt\\]"):
        ec.load(engine)


@pytest.mark.parametrize("options, message", [
    ({"min_batch": 8, "opt_batch": 4, "max_batch": 16}, "min_batch <= opt_batch"),
    ({"opt_batch": 32, "max_batch": 16}, "min_batch <= opt_batch"),
    ({"build": "jetson"}, "build"),
    ({"workspace_mb": 0}, "workspace_mb"),
    ({"opset": 12}, "opset"),
])
def test_bad_options_are_refused(cnn_dm, tmp_path, options, message):
    with pytest.raises(ec.ConfigError, match=message):
        cnn_dm.export("tensorrt", tmp_path / "m_trt", **{"build": "device", **options})
    assert not (tmp_path / "m_trt").exists()


def test_path_must_fit_the_build_mode(cnn_dm, tmp_path):
    with pytest.raises(ec.ConfigError, match="folder path without a suffix"):
        cnn_dm.export("tensorrt", tmp_path / "model.engine", build="device", **FAST)
    with pytest.raises(ec.ConfigError, match="build='device'"):
        cnn_dm.export("tensorrt", tmp_path / "model_trt", build="here", **FAST)
    with pytest.raises(ec.ConfigError, match=".engine or .plan"):
        cnn_dm.export("tensorrt", tmp_path / "model.trt", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_fp32_bundle_holds_verified_onnx_and_exact_command(fp32_bundle):
    path, art = fp32_bundle
    assert sorted(p.name for p in path.iterdir()) == ["build_engine.py", "build_engine.sh",
                                                     "edgecompress.json", "model.onnx"]
    assert art.precision == "fp32" and art.parity is not None and art.parity.passed
    assert art.parity.max_abs_diff < 1e-4 and art.parity.top1_agreement == 1.0
    assert "engine not built" in art.parity.reference and art.latency is None
    assert _command(path) == ("trtexec --onnx=model.onnx --saveEngine=model.engine "
                              "--memPoolSize=workspace:512M --minShapes=input:1x1x16x16 "
                              "--optShapes=input:4x1x16x16 --maxShapes=input:16x1x16x16")
    assert _command(path).replace("trtexec", '"$TRTEXEC"', 1) in (path / "build_engine.sh").read_text()
    meta = json.loads((path / "edgecompress.json").read_text())
    assert meta["engine_built"] is False and meta["precision"] == "fp32"
    assert set(meta["weights_sha256"]) == {"model.onnx"}
    assert meta["profile_shapes"]["max"] == [16, 1, 16, 16]


def test_bundle_onnx_runs_any_batch_in_the_profile(fp32_bundle, cnn_dm, digits):
    path, _ = fp32_bundle
    x = digits.samples("val", 16)
    with ec.load(path / "model.onnx", threads=1) as runner:
        assert runner.inputs[0].shape[0] is None  # dynamic batch, as the profile promises
        out = runner(x.numpy())
    with torch.no_grad():
        ref = cnn_dm.model(x).numpy()
    assert float(np.abs(out - ref).max()) < 1e-4


def test_build_engine_py_is_standalone_and_uses_the_same_builder(fp32_bundle, tmp_path):
    path, _ = fp32_bundle
    script = (path / "build_engine.py").read_text()
    import inspect

    assert inspect.getsource(build_engine) in script  # the very function the exporter calls
    assert "shapes=((1, 1, 16, 16), (4, 1, 16, 16), (16, 1, 16, 16))" in script
    assert "edgecompress" not in script.split("def build_engine")[0].replace(
        "(written by edgecompress)", "")  # needs no edgecompress on the device
    py_compile.compile(str(path / "build_engine.py"), cfile=str(tmp_path / "b.pyc"), doraise=True)
    if not HAS_TRT:  # here it can only fail, and must fail on the missing tensorrt
        proc = subprocess.run([sys.executable, str(path / "build_engine.py")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode != 0 and "tensorrt" in proc.stderr
        assert not (path / "model.engine").exists()


def test_fp16_static_batch_bundle(cnn_dm, tmp_path):
    art = cnn_dm.export("tensorrt", tmp_path / "fp16_trt", build="device", fp16=True,
                        dynamic_batch=False, **FAST)
    assert art.precision == "fp16" and art.parity is not None and art.parity.passed
    command = _command(tmp_path / "fp16_trt")
    assert "--fp16" in command.split() and "--int8" not in command
    assert "Shapes=" not in command  # static graph: no optimization profile
    with ec.load(tmp_path / "fp16_trt" / "model.onnx") as runner:
        assert runner.inputs[0].shape == (1, 1, 16, 16)


def test_int8_bundle_is_symmetric_qdq_with_int8_flag(int8_dm, fp32_bundle, tmp_path):
    path = tmp_path / "int8_trt"
    art = int8_dm.export("tensorrt", path, build="device", **FAST)
    assert art.precision == "int8-static"
    assert art.parity is not None and art.parity.passed
    assert art.parity.top1_agreement >= 0.98 and "simulated INT8" in art.parity.reference
    assert "--int8" in _command(path).split() and "--fp16" not in _command(path)
    assert check_symmetric_int8(path / "model.onnx") >= 6  # every conv/linear input quantized
    # int8 weights really are in the file: far smaller than the float bundle's ONNX
    float_onnx = (fp32_bundle[0] / "model.onnx").stat().st_size
    assert (path / "model.onnx").stat().st_size < 0.5 * float_onnx


def test_dynamic_int8_recipe_is_refused(cnn_dm, tmp_path):
    dm = copy.copy(cnn_dm)
    dm.quant_recipe = ec.DynamicRecipe()
    dm.float_model = cnn_dm.model
    with pytest.raises(ec.ExportError, match="Formats that can: .*onnx"):
        dm.export("tensorrt", tmp_path / "dyn_trt", build="device", **FAST)


@pytest.mark.skipif(not (HAS_TRT and HAS_GPU),
                    reason="needs the tensorrt package and a CUDA GPU (absent on the machine "
                           "these tests were written on; see docs/formats/tensorrt.md)")
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_load_run_parity(cnn_dm, digits, tmp_path, fp16):
    path = tmp_path / "model.engine"
    art = cnn_dm.export("tensorrt", path, fp16=fp16, max_batch=32, **FAST)
    assert art.parity is not None and art.parity.passed, str(art.parity)
    x = digits.samples("val", 40)  # more than max_batch: the runner splits the call
    with ec.load(path) as runner:
        out = runner(x.numpy())
    with torch.no_grad():
        ref = cnn_dm.model(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= (0.98 if fp16 else 1.0)


def test_build_engine_sh_runs_the_recorded_command(fp32_bundle, tmp_path):
    # trtexec cannot run here; a recorder stands in for it so the shell script itself is
    # checked: it must call the binary named by TRTEXEC with exactly the recorded arguments
    path, _ = fp32_bundle
    recorder = tmp_path / "trtexec"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args.txt"\n')
    recorder.chmod(0o755)
    proc = subprocess.run(["sh", str(path / "build_engine.sh")], capture_output=True, text=True,
                          env={"TRTEXEC": str(recorder), "PATH": "/usr/bin:/bin"}, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")[:-1]
    assert ["trtexec", *args] == _command(path).split()
