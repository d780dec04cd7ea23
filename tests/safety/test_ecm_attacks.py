"""Crafted .ecm files: loading one never runs code, never exhausts memory, never hides tampering.

Each payload would create a marker file when executed; every test asserts the marker is absent
(and one test shows the same payload does create it when unpickled unsafely, so the check can
fail)."""

from __future__ import annotations

import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress import _ecm_archive
from edgecompress.errors import ArtifactError

from ._crafted import rehash, rewrite_zip, set_manifest, unzip_bytes, zip_bytes


class MarkerPayload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(MarkerPayload(marker), buf)
    return buf.getvalue()


def test_payload_runs_when_unpickled_unsafely(tmp_path):
    """The payload used below is real: torch.load(weights_only=False) creates the marker."""
    marker = tmp_path / "ran"
    torch.load(io.BytesIO(payload_bytes(marker)), weights_only=False)
    assert marker.exists()


def _program_with(members: dict[str, bytes], change) -> dict[str, bytes]:
    program = unzip_bytes(members["program.pt2"])
    members["program.pt2"] = zip_bytes(change(program))
    return rehash(members)


def _use_pickle_weight(marker: Path):
    def change(program: dict[str, bytes]) -> dict[str, bytes]:
        cfg_name = "archive/data/weights/model_weights_config.json"
        cfg = json.loads(program[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        program[cfg_name] = json.dumps(cfg).encode()
        program["archive/data/weights/" + first["path_name"]] = payload_bytes(marker)
        return program
    return change


@pytest.mark.parametrize("verify", [True, False])
def test_use_pickle_weight_in_program_is_refused(saved_ecm, tmp_path, verify):
    marker = tmp_path / "ran"
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm",
                      lambda m: _program_with(m, _use_pickle_weight(marker)))
    with pytest.raises(ArtifactError, match="use_pickle"):
        ec.DeployableModel.load(bad, verify=verify)
    with pytest.raises(ArtifactError, match="use_pickle"):
        ec.load(bad)
    assert not marker.exists()


def test_pickled_sample_inputs_in_program_are_refused(saved_ecm, tmp_path):
    marker = tmp_path / "ran"

    def change(program):
        program["archive/data/sample_inputs/model.pt"] = payload_bytes(marker)
        return program
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", lambda m: _program_with(m, change))
    with pytest.raises(ArtifactError, match="other than tensors"):
        ec.DeployableModel.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize("member", ["version", "archive/data/constants/custom_obj_0",
                                    "archive/data/weights/model.pt", "serialized_state_dict.pt"])
def test_program_member_outside_allow_list_is_refused(saved_ecm, tmp_path, member):
    """Legacy-format and custom-object members reach torch's weights_only=False paths."""
    marker = tmp_path / "ran"

    def change(program):
        program[member] = payload_bytes(marker)
        return program
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", lambda m: _program_with(m, change))
    with pytest.raises(ArtifactError, match="unexpected member"):
        ec.DeployableModel.load(bad)
    assert not marker.exists()


def test_program_calling_a_non_torch_target_is_refused(saved_ecm, tmp_path):
    def change(program):
        graph = json.loads(program["archive/models/model.json"])
        graph["graph_module"]["graph"]["nodes"][0]["target"] = "os.system"
        program["archive/models/model.json"] = json.dumps(graph).encode()
        return program
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", lambda m: _program_with(m, change))
    with pytest.raises(ArtifactError, match="not one of torch's operators"):
        ec.DeployableModel.load(bad)


def test_pickled_weights_member_is_refused(saved_ecm, tmp_path):
    marker = tmp_path / "ran"

    def change(m):
        m["weights.pt"] = payload_bytes(marker)
        return rehash(m)
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", change)
    with pytest.raises(ArtifactError, match="other than tensors"):
        ec.DeployableModel.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize("builder", ["os:abort", "tempfile:mkdtemp", "ec_evil_mod:build",
                                     "edgecompress.deployable:os.abort",
                                     "edgecompress.models:torch.save"])
def test_builder_named_in_file_is_not_imported(saved_ecm, tmp_path, monkeypatch, builder):
    """A file naming any builder outside edgecompress.models: nothing imported, nothing called;
    the model comes from the checked program and still runs."""
    marker = tmp_path / "imported"
    (tmp_path / "ec_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef build():\n    open({str(marker)!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm",
                      lambda m: rehash(set_manifest(m, builder=builder)))
    dm = ec.DeployableModel.load(bad)
    assert "ec_evil_mod" not in sys.modules and not marker.exists()
    assert type(dm.model).__name__ == "ExportedProgramModule"
    assert dm.model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_builder_passed_by_the_caller_is_used(saved_ecm, tmp_path):
    from edgecompress.models import small_cnn

    bad = rewrite_zip(saved_ecm, tmp_path / "b.ecm",
                      lambda m: rehash(set_manifest(m, builder="os:abort")))
    dm = ec.DeployableModel.load(bad, builder=lambda: small_cnn(width=8))
    assert type(dm.model).__name__ == "SmallCNN"


@pytest.mark.parametrize("recipe_version", [2, 1])
def test_rebuild_hook_outside_allow_list_is_refused(tmp_path, tiny_dm, digits, recipe_version):
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=32)], measure=False).run(
        tiny_dm.model, digits)
    path = dm.save(tmp_path / "q.ecm", portable=False)
    hook = "edgecompress.deployable:os.abort"

    def change(m):
        manifest = json.loads(m["manifest.json"])
        recipe = manifest["quant_recipe"]
        if recipe_version == 2:
            recipe["rebuild"] = hook
        else:  # a version-1 recipe kept the hook in its untyped ``extra``
            recipe.update(version=1, extra={"rebuild": hook}, rebuild=None)
        m["manifest.json"] = json.dumps(manifest).encode()
        return rehash(m)
    bad = rewrite_zip(path, tmp_path / "bad.ecm", change)
    with pytest.raises(ArtifactError, match="refusing to rebuild"):
        ec.DeployableModel.load(bad, builder=lambda: __import__(
            "edgecompress.models", fromlist=["small_cnn"]).small_cnn(width=8))


def test_altered_weights_fail_the_sha256_check(saved_ecm, tmp_path):
    def change(m):
        state = torch.load(io.BytesIO(m["weights.pt"]), weights_only=True)
        first = next(iter(state))
        state[first] = state[first] + 1
        buf = io.BytesIO()
        torch.save(state, buf)
        m["weights.pt"] = buf.getvalue()
        return m
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", change)
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        ec.load(bad)


def test_file_without_records_is_unverified(saved_ecm, tmp_path, caplog):
    def change(m):
        manifest = json.loads(m["manifest.json"])
        del manifest["sha256"]
        m["manifest.json"] = json.dumps(manifest).encode()
        return m
    old = rewrite_zip(saved_ecm, tmp_path / "old.ecm", change)
    with pytest.raises(ArtifactError, match="no sha256 records"):
        ec.load(old)
    runner = ec.load(old, verify=False)
    assert runner.verified is False and "cannot be verified" in caplog.text
    assert ec.load(saved_ecm).verified is True


def test_unknown_and_duplicate_members_are_refused(saved_ecm, tmp_path):
    extra = rewrite_zip(saved_ecm, tmp_path / "x.ecm", lambda m: {**m, "notes.txt": b"hi"})
    with pytest.raises(ArtifactError, match="unexpected member 'notes.txt'"):
        ec.DeployableModel.load(extra)
    dup = tmp_path / "dup.ecm"
    with zipfile.ZipFile(saved_ecm) as src, zipfile.ZipFile(dup, "w") as zf:
        for name in src.namelist():
            zf.writestr(name, src.read(name))
        zf.writestr("weights.pt", b"second copy")
    with pytest.raises(ArtifactError, match="appears twice"):
        ec.DeployableModel.load(dup)


def test_zip_bomb_is_refused_within_seconds(saved_ecm, tmp_path):
    bomb = rewrite_zip(saved_ecm, tmp_path / "bomb.ecm",
                       lambda m: rehash({**m, "calib_samples.pt": bytes(64 << 20)}))
    assert bomb.stat().st_size < 2 << 20  # 64 MB of zeros deflate to ~64 KB
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="zip bomb"):
        ec.DeployableModel.load(bomb)
    assert time.perf_counter() - t0 < 5


def test_nested_program_bomb_is_refused(saved_ecm, tmp_path):
    def change(program):
        program["archive/data/weights/weight_999"] = bytes(64 << 20)
        return program

    def outer(m):
        program = unzip_bytes(m["program.pt2"])
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in change(program).items():
                zf.writestr(name, data)
        m["program.pt2"] = buf.getvalue()
        return rehash(m)
    bomb = rewrite_zip(saved_ecm, tmp_path / "bomb.ecm", outer)
    with pytest.raises(ArtifactError, match="zip bomb|would unpack"):
        ec.DeployableModel.load(bomb)


def test_absolute_size_cap(saved_ecm, monkeypatch):
    monkeypatch.setattr(_ecm_archive, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(ArtifactError, match="over the limit"):
        ec.DeployableModel.load(saved_ecm)


@pytest.mark.parametrize("shape", [[1, 1, 1_000_000, 1_000_000], [1, -3, 16, 16], [1, "16"], [],
                                   [1, 1.5, 16, 16]])
def test_bad_input_shape_in_manifest_is_refused(saved_ecm, tmp_path, shape):
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", lambda m: rehash(set_manifest(
        m, input_spec={"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW"})))
    with pytest.raises(ArtifactError, match="not a usable input shape"):
        ec.DeployableModel.load(bad)


def test_truncated_ecm_is_a_clear_error(saved_ecm, tmp_path):
    bad = tmp_path / "t.ecm"
    bad.write_bytes(saved_ecm.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="not a readable .ecm"):
        ec.DeployableModel.load(bad)


def test_clean_file_still_loads_and_matches(saved_ecm, tiny_dm):
    runner = ec.load(saved_ecm)
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = tiny_dm.model(torch.from_numpy(x)).numpy()
    assert np.abs(runner(x) - ref).max() < 1e-5


@pytest.mark.parametrize("changes", [{"form": "bogus"}, {"report": [1, 2]}, {"history": 5},
                                     {"structure": "x", "builder": "edgecompress.models:small_cnn"},
                                     {"input_spec": None}])
def test_malformed_manifest_fields_are_clear_errors(saved_ecm, tmp_path, changes):
    bad = rewrite_zip(saved_ecm, tmp_path / "bad.ecm", lambda m: rehash(set_manifest(m, **changes)))
    with pytest.raises(ArtifactError):
        ec.DeployableModel.load(bad)


def test_cli_info_on_crafted_files_never_runs_their_code(saved_ecm, tmp_path):
    """`edgecompress info` in a real process: an os:abort builder does not kill it, a pickled
    program member is refused with exit code 2, and no marker appears."""
    import os
    import subprocess

    marker = tmp_path / "ran"
    abort = rewrite_zip(saved_ecm, tmp_path / "abort.ecm",
                        lambda m: rehash(set_manifest(m, builder="os:abort")))
    pickled = rewrite_zip(saved_ecm, tmp_path / "pickled.ecm",
                          lambda m: _program_with(m, _use_pickle_weight(marker)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    ok = subprocess.run([sys.executable, "-m", "edgecompress", "info", str(abort)],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "not imported" in ok.stderr
    refused = subprocess.run([sys.executable, "-m", "edgecompress", "info", str(pickled)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "use_pickle" in refused.stderr
    assert not marker.exists()
