"""ec.from_keras: Keras 3 / legacy .h5 / SavedModel models in, converted in a subprocess.

The Keras models are built here, in a child process as well: this test process never imports
TensorFlow (the point of the design), and ``test_tensorflow_never_loads_here`` checks it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

import edgecompress as ec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="from_keras needs TensorFlow and tf2onnx: pip install 'edgecompress[tf]'")

BUILD = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras
    keras.utils.set_random_seed(0)
    out = sys.argv[1]
    x = keras.Input((16, 16, 1))
    h = keras.layers.Normalization(mean=0.3, variance=2.0)(x)  # constants the trace captures
    h = keras.layers.Conv2D(8, 3, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    r = keras.layers.Conv2D(8, 3, padding="same")(h)
    h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = keras.layers.Dense(10, activation="softmax")(h)
    m = keras.Model(x, y)
    bn = m.layers[3]  # non-trivial statistics, so the BatchNorm fold is exercised
    g, b, mu, var = bn.get_weights()
    bn.set_weights([g * 1.5, b + 0.1, mu + 0.2, var * 2.0])
    m.save(out + "/cnn.keras")
    m.save(out + "/cnn.h5")
    m.export(out + "/saved")
""")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras")
    proc = subprocess.run([sys.executable, "-c", BUILD, str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def nhwc_digits():
    return ec.data.digits(image_size=16, layout="NHWC")


@pytest.fixture(scope="module")
def converted(keras_files, nhwc_digits):
    return ec.from_keras(keras_files / "cnn.keras", nhwc_digits.samples("val", 32))


def test_keras_file_converts_within_1e4_of_keras(converted):
    info = converted.edgecompress_source
    assert info["converted_from"] == "keras" and info["layout"] == "NHWC"
    assert info["conversion_max_abs_diff"] <= 1e-4
    assert info["inputs"][0]["shape"] == [None, 16, 16, 1]
    assert "tf2onnx" in info["converter"]


def test_captured_constants_stay_constants_not_extra_inputs(converted):
    info = converted.edgecompress_source
    assert len(info["inputs"]) == 1  # tf2onnx alone made Normalization's mean/variance inputs
    assert len(info["captured_constants_inlined"]) == 2


def test_tensorflow_never_loads_here(converted):
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules


def test_int8_artifacts_take_what_keras_took(converted, nhwc_digits, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(converted, nhwc_digits)
    assert dm.input_spec.layout == "NHWC" and dm.input_spec.shape == (1, 16, 16, 1)
    art = dm.export("onnx", tmp_path / "m.onnx")
    runner = art.load()
    assert runner.inputs[0].shape[1:] == (16, 16, 1)
    assert art.precision == "int8-static" and art.parity.passed, art
    assert dm.report.stages[0].notes["converted_from"] == "keras"


def test_h5_and_saved_model_convert_too(keras_files, nhwc_digits):
    x = nhwc_digits.samples("val", 8)
    h5 = ec.from_keras(keras_files / "cnn.h5", x)
    saved = ec.from_keras(keras_files / "saved", x)
    assert saved.edgecompress_source["converted_from"] == "saved_model"
    for m in (h5, saved):
        assert m.edgecompress_source["conversion_max_abs_diff"] <= 1e-4
    with torch.no_grad():
        assert torch.allclose(h5(x), saved(x), atol=1e-5)


def test_unreadable_keras_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ec.ConversionError, match="could not load"):
        ec.from_keras(bad)


def test_a_path_that_is_no_keras_model_is_refused(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ec.ConfigError, match="SavedModel"):
        ec.from_keras(other)
