"""Shared fixtures: real data (scikit-learn's bundled digits) and a really trained small CNN."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch

os.environ.setdefault("EDGECOMPRESS_PROGRESS", "0")
# Ultralytics (test-only): no network, no pip installs of its own (on an image Pillow cannot read
# it tries to install pi-heif from inside its patched Image.open), settings outside ~/.config
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="edgecompress-tests-yolo-"))

import edgecompress as ec  # noqa: E402
from edgecompress.models import small_cnn, small_resnet  # noqa: E402
from edgecompress.training import TrainConfig, cross_entropy_loss, train  # noqa: E402


@pytest.fixture(scope="session")
def digits() -> ec.DataBundle:
    """Digits at 16×16: small enough that every test trains and exports in seconds."""
    return ec.data.digits(image_size=16, batch_size=64, seed=0)


@pytest.fixture(scope="session")
def digits32() -> ec.DataBundle:
    return ec.data.digits(image_size=32, batch_size=64, seed=0)


def _trained(builder, data, epochs=3):
    torch.manual_seed(0)
    model = builder()
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=epochs, lr=3e-3), val_loader=data.val)
    return model.eval()


@pytest.fixture(scope="session")
def _cnn_weights(digits):
    return _trained(lambda: small_cnn(width=16), digits)


@pytest.fixture()
def trained_cnn(_cnn_weights) -> torch.nn.Module:
    """A SmallCNN (width 16) trained on digits to >90% val accuracy; a fresh copy per test."""
    return copy.deepcopy(_cnn_weights)


@pytest.fixture(scope="session")
def _resnet_weights(digits):
    return _trained(lambda: small_resnet(width=8), digits)


@pytest.fixture()
def trained_resnet(_resnet_weights) -> torch.nn.Module:
    """A SmallResNet (residual adds, width 8) trained on digits; a fresh copy per test."""
    return copy.deepcopy(_resnet_weights)


@pytest.fixture(scope="session")
def fused_onnx(tmp_path_factory, _cnn_weights, digits):
    """The trained CNN, BatchNorm-fused and exported to ONNX once for the whole session."""
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(copy.deepcopy(_cnn_weights), digits)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    dm.export("onnx", path, benchmark_runs=0)
    return path


@pytest.fixture(scope="module")
def cnn_dm(_cnn_weights, digits) -> ec.DeployableModel:
    """The trained CNN as a DeployableModel with no passes applied (one per test module)."""
    return ec.Pipeline([], measure=False).run(copy.deepcopy(_cnn_weights), digits)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread: two threads on a loaded 2-core machine spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
