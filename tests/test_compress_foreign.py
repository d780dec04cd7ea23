"""`edgecompress compress --model x.onnx | x.keras`: models from other tools through the CLI.

The CLI runs as a user runs it (``python -m edgecompress``, a child process); the ONNX file is
written here by torch.onnx from the trained digits CNN, the Keras file by Keras in a child process
(this test process never imports TensorFlow).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import edgecompress as ec

pytest.importorskip("onnx2torch", reason="--model x.onnx needs onnx2torch (pip install 'edgecompress[onnx-in]')")

FAST = ["--data", "digits", "--image-size", "16", "--export", "onnx", "--benchmark-runs", "0",
        "--no-measure-latency", "--no-measure-macs"]

KERAS_BUILD = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    keras.utils.set_random_seed(0)
    x = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    keras.Model(x, keras.layers.Dense(10)(h)).save(sys.argv[1])
""")


def _compress(model: Path, out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-m", "edgecompress", "compress", "--model", str(model),
                           *FAST, *flags, "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "report.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compress_an_onnx_file_prunes_and_quantizes_it_to_a_verified_onnx(trained_cnn, digits, tmp_path):
    src = tmp_path / "small.onnx"
    torch.onnx.export(trained_cnn.eval(), digits.samples("val", 1), str(src), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    before = _sha(src)
    _, report = _compress(src, tmp_path / "out", "--prune", "0.25", "--int8")
    first = report["stages"][0]
    assert first["notes"]["converted_from"] == "onnx"
    assert first["notes"]["conversion_max_abs_diff"] <= 1e-4
    assert report["stages"][-1]["params"] < first["params"]  # channels physically removed
    (art,) = report["artifacts"]
    assert art["format"] == "onnx" and art["precision"] == "int8-static" and art["parity_ok"]
    runner = ec.load(tmp_path / "out" / "model.onnx")
    assert runner.inputs[0].shape[1:] == (1, 16, 16)
    assert _sha(src) == before  # the user's file is only read


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                    or importlib.util.find_spec("tf2onnx") is None,
                    reason="--model x.keras needs TensorFlow and tf2onnx: pip install 'edgecompress[tf]'")
def test_compress_a_keras_file_gives_an_int8_onnx_that_takes_nhwc(tmp_path):
    src = tmp_path / "small.keras"
    subprocess.run([sys.executable, "-c", KERAS_BUILD, str(src)], check=True, timeout=600,
                   capture_output=True)
    _, report = _compress(src, tmp_path / "out", "--int8")
    notes = report["stages"][0]["notes"]
    assert notes["converted_from"] == "keras" and notes["layout"] == "NHWC"
    assert notes["conversion_max_abs_diff"] <= 1e-4
    (art,) = report["artifacts"]
    assert art["precision"] == "int8-static" and art["parity_ok"]
    runner = ec.load(tmp_path / "out" / "model.onnx")
    assert runner.inputs[0].shape[1:] == (16, 16, 1)  # what the Keras model took


def test_compress_refuses_weights_for_an_onnx_file(trained_cnn, digits, tmp_path):
    src = tmp_path / "small.onnx"
    torch.onnx.export(trained_cnn.eval(), digits.samples("val", 1), str(src), dynamo=False,
                      opset_version=17)
    proc = subprocess.run([sys.executable, "-m", "edgecompress", "compress", "--model", str(src),
                           "--weights", str(src), "--int8", *FAST, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--weights applies to torch models" in proc.stderr
