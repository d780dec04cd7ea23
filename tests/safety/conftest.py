"""Fixtures for the safety suite: small exported artifacts, crafted-file helpers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dm(digits):
    """An untrained, seeded SmallCNN (width 8) as a DeployableModel: safety checks need a real
    model and real data, not an accurate one (the trained fixtures take minutes on a busy box)."""
    import torch

    import edgecompress as ec
    from edgecompress.models import small_cnn

    torch.manual_seed(0)
    return ec.Pipeline([], measure=False).run(small_cnn(width=8).eval(), digits)


@pytest.fixture(scope="session")
def saved_ecm(tmp_path_factory, tiny_dm) -> Path:
    """``tiny_dm`` saved as .ecm with a torch.export program and no builder."""
    path = tmp_path_factory.mktemp("ecm") / "m.ecm"
    tiny_dm.save(path)
    return path


FORMATS = {"onnx": "m.onnx", "tflite": "m.tflite", "torchscript": "m.ptl", "ncnn": "m_ncnn",
           "torch": "m.ecm"}


@pytest.fixture(scope="session")
def artifacts(tiny_dm, tmp_path_factory) -> dict[str, Path]:
    """``tiny_dm`` exported once to every installed format (read-only for the tests)."""
    from edgecompress.formats import get_format

    out = tmp_path_factory.mktemp("artifacts")
    paths = {}
    for fmt, name in FORMATS.items():
        if get_format(fmt).available():
            paths[fmt] = tiny_dm.export(fmt, out / name, benchmark_runs=0, parity_samples=16).path
    return paths
