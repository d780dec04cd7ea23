"""The device side without torch: the lazy facade, ec.load / benchmark / system_status, and
edgecompress serve, first with torch blocked in a subprocess, then in a fresh venv that never had
torch, built from the edgecompress-device distribution under device/."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import edgecompress as ec

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# what a device needs: these names must resolve without torch
TORCH_FREE = ["ArtifactError", "ChainError", "ConfigError", "DataError", "EdgeCompressError",
              "ExportError", "FORMATS", "Form", "FormatSpec", "InputError", "LatencyStats",
              "MissingExtraError", "ParityError", "PassError", "Runner", "__version__", "load",
              "register_format", "system_status", "detection_map", "DetectionMAP",
              "DetectionHead"]

BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # import torch now raises ImportError\n"


def _run(code: str, python: str = sys.executable, env: dict | None = None,
         timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(TESTS))


def _src_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}


# the script the torch-free interpreters run: load, benchmark, status, then serve and predict
SERVE_AND_PREDICT = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    import edgecompress as ec
    from edgecompress.serve import ServeConfig, create_app
    from serve_helpers import LiveServer
    import httpx
    from PIL import Image

    results = {"status_keys": sorted(ec.system_status())}
    for path in sys.argv[1:]:
        runner = ec.load(path)
        stats = runner.benchmark(warmup=2, runs=10)
        app = create_app(ServeConfig(path, state_dir=path + ".state", infer_threads=1, queue=4))
        buf = io.BytesIO()
        Image.fromarray((np.arange(256).reshape(16, 16)).astype("uint8")).save(buf, "PNG")
        with LiveServer(app) as url:
            r = httpx.post(url + "/predict", files={"file": ("d.png", buf.getvalue(), "image/png")})
            h = httpx.get(url + "/health").json()
        results[path] = {"p50_ms": stats.p50_ms, "status": r.status_code, "body": r.json(),
                         "format": h["format"]}
    results["torch_loaded"] = "torch" in sys.modules and sys.modules["torch"] is not None
    results["edgecompress_file"] = ec.__file__
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def int8_onnx(_cnn_weights, digits, tmp_path_factory):
    dm = ec.Pipeline([ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=64)], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)
    return dm.export("onnx", tmp_path_factory.mktemp("dev") / "model.onnx", benchmark_runs=0).path


@pytest.fixture(scope="module")
def tflite_file(_cnn_weights, digits, tmp_path_factory):
    pytest.importorskip("litert_torch")
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(copy.deepcopy(_cnn_weights), digits)
    return dm.export("tflite", tmp_path_factory.mktemp("devtfl") / "model.tflite",
                     benchmark_runs=0, accuracy_samples=64).path


def test_every_public_name_resolves():
    for name in ec.__all__:
        assert getattr(ec, name) is not None, name
    assert ec.targets.get_target("rpi5").name == "rpi5" and callable(ec.students.build)
    assert set(ec.__all__) <= set(dir(ec))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ec.nope  # noqa: B018


def test_facade_imports_without_torch():
    code = BLOCK_TORCH + textwrap.dedent(f"""
        import edgecompress as ec, edgecompress.runtime, edgecompress.serve
        names = {TORCH_FREE!r}
        assert all(getattr(ec, n) is not None for n in names)
        try:
            ec.Pipeline
        except ImportError as exc:
            print("compression side needs torch:", exc)
        from edgecompress.cli import main
        sys.exit(main(["formats"]))
    """)
    out = _run(code, env=_src_env())
    assert out.returncode == 0, out.stderr
    assert "compression side needs torch" in out.stdout and "onnx" in out.stdout


def test_load_benchmark_and_serve_without_torch(int8_onnx):
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + SERVE_AND_PREDICT, str(int8_onnx)],
                         capture_output=True, text=True, timeout=240, env=_src_env(),
                         cwd=str(TESTS))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.splitlines()[-1])
    one = res[str(int8_onnx)]
    assert one["status"] == 200 and len(one["body"]["top_k"][0]) == 5 and one["p50_ms"] > 0
    assert "memory" in res["status_keys"] and res["torch_loaded"] is False


def _pip_install(venv: Path, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                           spec], capture_output=True, text=True, timeout=900)


@pytest.mark.device_venv
@pytest.mark.slow
def test_fresh_venv_device_install_serves_int8_onnx_and_tflite(tmp_path, int8_onnx, tflite_file):
    """A venv that never had torch: install ./device[onnx,tflite,serve], then serve both files."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    t0 = time.monotonic()
    install = _pip_install(venv, f"{ROOT / 'device'}[onnx,tflite,serve]")
    if install.returncode != 0 and ("No matching distribution" in install.stderr
                                    or "Could not fetch" in install.stderr):
        pytest.skip(f"no package index reachable for the device install: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-2000:]
    assert _pip_install(venv, "httpx").returncode == 0  # the test's client, not the device's
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(TESTS)  # serve_helpers only; edgecompress comes from the venv
    no_torch = _run("import torch", python=python, env=env)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    out = subprocess.run([python, "-c", SERVE_AND_PREDICT, str(int8_onnx), str(tflite_file)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.splitlines()[-1])
    assert res["torch_loaded"] is False
    for path, fmt in ((int8_onnx, "onnx"), (tflite_file, "tflite")):
        one = res[str(path)]
        assert one["status"] == 200 and one["format"] == fmt and one["body"]["top_k"][0][0]["label"]
    assert res["edgecompress_file"].startswith(str(venv)), "edgecompress must come from the venv"
    print(f"device install took {time.monotonic() - t0:.0f} s")


def test_openvino_loads_and_serves_without_torch(_cnn_weights, digits, tmp_path):
    pytest.importorskip("openvino")
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(copy.deepcopy(_cnn_weights), digits)
    art = dm.export("openvino", tmp_path / "ov", benchmark_runs=0, accuracy_samples=32)
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + SERVE_AND_PREDICT, str(art.path)],
                         capture_output=True, text=True, timeout=240, env=_src_env(),
                         cwd=str(TESTS))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.splitlines()[-1])
    one = res[str(art.path)]
    assert one["format"] == "openvino" and one["status"] == 200 and res["torch_loaded"] is False
