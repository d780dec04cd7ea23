"""Writing never destroys what was at the destination, and a failed write leaves no trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import edgecompress as ec
from edgecompress.deployable import InputSpec
from edgecompress.errors import ConfigError, ParityError

FAST = {"benchmark_runs": 0, "parity_samples": 16}


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries an interrupted write would leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
                if p.is_file()}
    return {path.name: path.read_bytes()}


def test_export_onto_a_users_folder_refuses_and_keeps_it(tiny_dm, tmp_path):
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    for fmt, dest in (("onnx", mine), ("torch", mine)):
        with pytest.raises(ConfigError):
            tiny_dm.export(fmt, dest, **FAST)
    with pytest.raises(ConfigError, match="did not write"):
        tiny_dm.save(mine)
    assert (mine / "thesis.txt").read_text() == "four years of work"
    assert leftovers(tmp_path) == []


def test_save_onto_a_foreign_file_refuses(tiny_dm, tmp_path):
    theirs = tmp_path / "m.ecm"
    theirs.write_bytes(b"not a model, but mine")
    with pytest.raises(ConfigError, match="did not write"):
        tiny_dm.save(theirs)
    with pytest.raises(ConfigError, match="did not write"):
        tiny_dm.export("torch", theirs, **FAST)
    assert theirs.read_bytes() == b"not a model, but mine"


def test_existing_artifact_needs_overwrite_and_is_replaced(tiny_dm, tmp_path):
    path = tmp_path / "m.onnx"
    tiny_dm.export("onnx", path, **FAST)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="overwrite=True"):
        tiny_dm.export("onnx", path, **FAST)
    assert path.read_bytes() == before
    art = tiny_dm.export("onnx", path, overwrite=True, dynamic_batch=False, **FAST)
    assert art.path == path and path.read_bytes() != before and ec.load(path).verified
    assert leftovers(tmp_path) == []


def test_other_formats_artifact_is_not_replaced(tiny_dm, tmp_path):
    ecm = tiny_dm.export("torch", tmp_path / "m.ecm", **FAST).path
    renamed = tmp_path / "m.onnx"
    os.replace(ecm, renamed)
    with pytest.raises(ConfigError, match="did not write"):
        tiny_dm.export("onnx", renamed, overwrite=True, **FAST)


def test_ncnn_folder_is_swapped_only_when_it_holds_only_the_artifact(tiny_dm, tmp_path):
    pytest.importorskip("pnnx")
    folder = tmp_path / "model_ncnn"
    folder.mkdir()  # an empty folder is a fine destination
    tiny_dm.export("ncnn", folder, **FAST)
    first = snapshot(folder)
    with pytest.raises(ConfigError, match="overwrite=True"):
        tiny_dm.export("ncnn", folder, **FAST)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        tiny_dm.export("ncnn", folder, overwrite=True, **FAST)
    (folder / "notes.txt").unlink()
    assert snapshot(folder) == first
    tiny_dm.export("ncnn", folder, overwrite=True, fp16=True, **FAST)
    assert snapshot(folder) != first and ec.load(folder).metadata["precision"] == "fp16"
    assert leftovers(tmp_path) == []


def test_failed_parity_leaves_the_old_artifact_untouched(tiny_dm, tmp_path):
    path = tmp_path / "m.onnx"
    tiny_dm.export("onnx", path, **FAST)
    before = path.read_bytes()
    # a tolerance of 0 fails on any rounding difference ONNX Runtime's fused kernels make
    with pytest.raises(ParityError, match="nothing at .* changed"):
        tiny_dm.export("onnx", path, overwrite=True, tolerance=0.0, on_parity_fail="raise",
                       **FAST)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    fresh = tmp_path / "new.onnx"
    with pytest.raises(ParityError):
        tiny_dm.export("onnx", fresh, tolerance=0.0, on_parity_fail="raise", **FAST)
    assert not fresh.exists() and leftovers(tmp_path) == []


class _Interrupting(torch.nn.Module):
    """Raises KeyboardInterrupt in forward once armed: a Ctrl-C in the middle of an export."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise KeyboardInterrupt
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("fmt,name", [("onnx", "m.onnx"), ("torch", "m.ecm"),
                                      ("torchscript", "m.ptl")])
def test_interrupted_export_leaves_nothing(tmp_path, fmt, name):
    model = _Interrupting().eval()
    dm = ec.DeployableModel(model, InputSpec((1, 1, 16, 16)))
    path = tmp_path / name
    dm.export(fmt, path, **FAST)
    before = snapshot(path)
    model.armed = True
    with pytest.raises(KeyboardInterrupt):
        dm.export(fmt, path, overwrite=True, **FAST)
    assert snapshot(path) == before and leftovers(tmp_path) == []


def test_symlink_destination_is_refused(tiny_dm, tmp_path):
    target = tmp_path / "precious.onnx"
    target.write_bytes(b"precious")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        tiny_dm.export("onnx", link, overwrite=True, **FAST)
    ecm_link = tmp_path / "l.ecm"
    ecm_link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        tiny_dm.save(ecm_link, overwrite=True)
    assert target.read_bytes() == b"precious"


def test_users_sidecar_named_file_is_not_replaced(tiny_dm, tmp_path):
    pytest.importorskip("ai_edge_litert")
    side = tmp_path / "m.ptl.json"
    side.write_text('{"my": "notes"}')
    with pytest.raises(ConfigError, match="m.ptl.json"):
        tiny_dm.export("torchscript", tmp_path / "m.ptl", **FAST)
    assert side.read_text() == '{"my": "notes"}' and not (tmp_path / "m.ptl").exists()


def test_compress_refuses_taken_destinations_before_any_work(tmp_path, capsys):
    from edgecompress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes: [{pass: fuse}]\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("my own notes, not a model")
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--recipe", str(recipe),
                 "--export", "onnx", "--out", str(out), "--overwrite"])
    assert code == 2 and "did not write" in capsys.readouterr().err
    assert (out / "model.onnx").read_text() == "my own notes, not a model"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]


def test_compress_keeps_a_users_report_file_without_overwrite(tmp_path, capsys):
    from edgecompress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes: [{pass: fuse}]\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--recipe", str(recipe),
                 "--export", "onnx", "--out", str(out)])
    assert code == 2 and "report.md" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my own report"
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
