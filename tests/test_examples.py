"""Every example runs in its fast mode."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.passes import PASSES
from edgecompress.registry import read_plugins as load_plugins

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart_fast(tmp_path, capsys):
    dm = _module("quickstart").main(["--fast", "--out", str(tmp_path)])
    assert "Run without --fast" in capsys.readouterr().out  # says why its accuracy is low
    assert (tmp_path / "model.onnx").exists() and (tmp_path / "model.ecm").exists()
    stages = [s.stage for s in dm.report.stages]
    assert stages == ["input", "structured_prune", "fuse", "quantize_ptq"]
    assert dm.report.artifacts[0].precision.startswith("int8")
    assert dm.report.artifacts[0].parity_ok


def _digit_pngs(folder: Path, n: int = 12) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        cls = folder / str(d.target[i])
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(cls / f"{i}.png")


def test_rpi_loop_on_an_image_folder(tmp_path, trained_cnn, digits):
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(trained_cnn, digits)
    art = dm.export("onnx", tmp_path / "m.onnx", benchmark_runs=0)
    _digit_pngs(tmp_path / "frames")
    summary = _module("rpi_camera_loop").main([str(art.path), "--source", str(tmp_path / "frames"),
                                               "--max-frames", "20", "--budget-ms", "1000",
                                               "--threads", "1"])
    assert summary["frames"] == 20 and summary["within_budget"] == 20
    assert summary["system"]["cpu_count"] >= 1


def test_plugin_package_installs_and_registers_its_pass(tmp_path, trained_cnn, digits, monkeypatch):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target),
                    str(EXAMPLES / "plugin_package")], check=True)
    monkeypatch.syspath_prepend(str(target))
    try:
        load_plugins(force=True)
        pipe = ec.Pipeline.from_recipe({"passes": [{"pass": "clip_weights", "percentile": 99.0}]})
        dm = pipe.run(trained_cnn, digits)
        assert dm.report.stages[1].notes["clipped_weights"] > 0
        assert dm.report.stages[-1].accuracy > 0.8
        with pytest.raises(ec.ConfigError, match="percentile"):
            ec.Pipeline.from_recipe({"passes": [{"pass": "clip_weights", "percentile": 10}]})
    finally:
        PASSES.pop("clip_weights", None)
        sys.modules.pop("ec_plugin_example", None)


def test_cifar_pipeline_fast_on_an_image_tar(tmp_path):
    import tarfile

    _digit_pngs(tmp_path / "imgs", n=60)
    tar_path = tmp_path / "imgs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "imgs", arcname="test")
    dm = _module("cifar_pipeline").main(["--data", str(tar_path), "--fast", "--out", str(tmp_path / "o")])
    assert [s.stage for s in dm.report.stages] == ["input", "structured_prune", "fuse", "quantize_ptq"]
    assert dm.report.stages[1].params < dm.report.stages[0].params
    assert (tmp_path / "o" / "model.onnx").exists() and (tmp_path / "o" / "model.tflite").exists()


def test_jetson_prepare_writes_a_build_bundle(tmp_path):
    art = _module("jetson_tensorrt").main(["prepare", "--fast", "--out", str(tmp_path)])
    bundle = tmp_path / "model_trt"
    assert art.path == bundle
    command = (bundle / "build_engine.sh").read_text()
    assert "trtexec" in command and "--fp16" in command and "--int8" in command
    assert (bundle / "model.onnx").exists() and (bundle / "build_engine.py").exists()


def test_jetson_run_without_an_engine_is_an_error_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "jetson_tensorrt.py"), "run",
                           str(tmp_path / "model.engine")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


class _TinyYoloHead(torch.nn.Module):
    """A YOLO-shaped raw head (N, 4 + 2, 16): boxes as fractions, sigmoid class scores."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 8, stride=8)

    def forward(self, x):
        out = self.conv(x).flatten(2)
        return torch.cat([out[:, :4].sigmoid(), out[:, 4:].sigmoid()], 1)


def test_detect_on_pi_draws_boxes_into_a_png(tmp_path):
    from PIL import Image

    from edgecompress.data import synthetic_detection

    torch.manual_seed(0)
    shapes = synthetic_detection(8, size=32, seed=0)
    bundle = shapes.bundle(size=32, batch_size=4, val=shapes)
    head = ec.DetectionHead("yolo", normalized=True, score_threshold=0.3,
                            class_names=tuple(shapes.class_names))
    dm = ec.Pipeline([], measure=False).run(_TinyYoloHead().eval(), bundle, head=head)
    art = dm.export("onnx", tmp_path / "det.onnx", benchmark_runs=0)
    (tmp_path / "frames").mkdir()
    for i in range(3):
        Image.fromarray(synthetic_detection(1, size=64, seed=i).image(0)[:48]).save(
            tmp_path / "frames" / f"{i}.png")
    summary = _module("detect_on_pi").main([str(art.path), "--source", str(tmp_path / "frames"),
                                            "--max-frames", "6", "--skip", "1", "--threads", "1",
                                            "--out", str(tmp_path / "out.png")])
    assert summary["frames"] == 6 and summary["detected_frames"] == 3
    assert summary["boxes_last_frame"] > 0  # random weights: scores near 0.5 pass 0.3
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == (64, 48)  # the frame's own size: boxes drawn in its pixels
