"""The command line: bench, info and formats on a real artifact; errors exit non-zero."""

import json

import pytest

from edgecompress.cli import main


@pytest.fixture()
def artifact(fused_onnx):
    return fused_onnx


def test_bench_json(artifact, capsys):
    assert main(["bench", str(artifact), "--runs", "5", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "onnx" and out["runs"] == 5 and out["p50_ms"] > 0


def test_info_shows_inputs_and_metadata(artifact, capsys):
    assert main(["info", str(artifact)]) == 0
    text = capsys.readouterr().out
    assert "format=onnx" in text and "shape=[None, 1, 16, 16]" in text and "class_names" in text


def test_formats_lists_the_table(capsys):
    assert main(["formats", "--json"]) == 0
    names = [r["format"] for r in json.loads(capsys.readouterr().out)]
    assert {"onnx", "tflite", "torchscript", "ncnn", "tensorrt"} <= set(names)


def test_missing_artifact_exits_with_a_clear_message(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
