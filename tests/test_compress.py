"""`edgecompress compress`: recipe + model + data → artifacts, report.json, report.md, plot."""

from __future__ import annotations

import json

import pytest
import yaml

import edgecompress as ec
from edgecompress.cli import main


def _recipe(tmp_path, passes):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"passes": passes}))
    return path


def test_compress_writes_artifacts_reports_and_plot(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"pass": "fuse"}])
    out = tmp_path / "out"
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--data", "digits",
                 "--image-size", "16", "--recipe", str(recipe), "--target", "x86",
                 "--export", "onnx,torch", "--out", str(out), "--benchmark-runs", "3"])
    assert code == 0
    for name in ("model.onnx", "model.ecm", "report.json", "report.md", "plot.png", "recipe.yaml"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["input", "fuse"]
    assert {a["format"] for a in report["artifacts"]} == {"onnx", "torch"}
    assert all(a["parity_ok"] for a in report["artifacts"])
    assert "Target: **x86**" in (out / "report.md").read_text()
    assert ec.Pipeline.from_recipe(out / "recipe.yaml") == ec.Pipeline.from_recipe(recipe)
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written to" in capsys.readouterr().out


@pytest.mark.parametrize("passes, words", [
    ([{"pass": "fuse", "bogus": 1}], "unknown option 'bogus'"),
    ([{"pass": "no_such_pass"}], "unknown pass 'no_such_pass'"),
])
def test_bad_recipe_fails_before_work_with_exit_code_2(tmp_path, capsys, passes, words):
    out = tmp_path / "out"
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--recipe",
                 str(_recipe(tmp_path, passes)), "--out", str(out)])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_bad_model_and_format_are_clear_errors(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"pass": "fuse"}])
    assert main(["compress", "--model", "nowhere:fn", "--recipe", str(recipe)]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["compress", "--model", "edgecompress.models:small_cnn", "--recipe", str(recipe),
                 "--export", "onnx,nosuchformat", "--out", str(tmp_path / "o")]) == 2
    assert "unknown export format 'nosuchformat'" in capsys.readouterr().err


ALL_PASSES = [
    {"pass": "distill", "student": "small_cnn", "epochs": 1, "max_batches": 4},
    {"pass": "structured_prune", "ratio": 0.3,
     "finetune": {"kind": "distill", "epochs": 1, "max_batches": 3}},
    {"pass": "unstructured_prune", "sparsity": 0.5,
     "finetune": {"kind": "finetune", "epochs": 1, "max_batches": 3}},
    {"pass": "fuse"},
    {"pass": "quantize_qat", "epochs": 1, "max_batches": 3, "samples": 64},
]


def test_recipe_with_every_kind_of_pass_writes_every_artifact(tmp_path):
    recipe = _recipe(tmp_path, ALL_PASSES)
    pipe = ec.Pipeline.from_recipe(recipe)
    assert ec.Pipeline.from_recipe(pipe.to_recipe()) == pipe  # the recipe round-trips
    out = tmp_path / "out"
    code = main(["compress", "--model", "edgecompress.models:small_resnet", "--data", "digits",
                 "--image-size", "16", "--recipe", str(recipe), "--export",
                 "onnx,tflite,torchscript", "--out", str(out), "--benchmark-runs", "2",
                 "--threads", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["input", "distill", "structured_prune",
                                                      "unstructured_prune", "fuse", "quantize_qat"]
    assert {a["format"]: a["precision"] for a in report["artifacts"]} == {
        "onnx": "int8-static", "tflite": "int8-static", "torchscript": "int8-static"}
    for name in ("model.onnx", "model.tflite", "model.ptl", "report.md", "plot.png"):
        assert (out / name).exists(), name


def test_unquantizable_format_in_compress_is_listed_and_exits_1(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"pass": "quantize_ptq", "samples": 32}])
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--data", "digits",
                 "--image-size", "16", "--recipe", str(recipe), "--export", "onnx,ncnn",
                 "--out", str(tmp_path / "o"), "--benchmark-runs", "2"])
    assert code == 1
    out = capsys.readouterr().out
    assert "✗ ncnn" in out and "Formats that can" in out and "✓ onnx" in out


def test_compress_to_a_relative_out_folder_with_every_format(tmp_path, monkeypatch, capsys):
    """`--out rel/` works for every format that runs here (pnnx runs in a scratch folder)."""
    # every image-model format that runs here (gguf holds language models: not this model)
    formats = [s.name for s in ec.FORMATS.values()
               if s.available() and not s.needs_gpu and s.name != "gguf"]
    assert {"onnx", "tflite", "torchscript", "ncnn", "torch"} <= set(formats)
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, [{"pass": "fuse"}])
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--data", "digits",
                 "--image-size", "16", "--recipe", str(recipe), "--export", ",".join(formats),
                 "--out", "rel/out/", "--benchmark-runs", "2"])
    assert code == 0, capsys.readouterr()
    report = json.loads((tmp_path / "rel/out/report.json").read_text())
    assert sorted(a["format"] for a in report["artifacts"]) == sorted(formats)
    assert all(a["parity_ok"] for a in report["artifacts"])
    assert (tmp_path / "rel/out/model_ncnn/model.param").is_file()
