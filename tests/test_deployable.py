"""Saving and loading DeployableModels: structure replay, no code execution on load."""

import io
import json
import os
import pickle
import zipfile

import pytest
import torch

import edgecompress as ec
from edgecompress.deployable import InputSpec
from edgecompress.models import small_cnn


@pytest.fixture()
def fused(trained_cnn, digits):
    return ec.Pipeline([ec.passes.Fuse()], measure=False).run(trained_cnn, digits,
                                                             builder="edgecompress.models:small_cnn_w16")


def small_cnn_w16():
    return small_cnn(width=16)


import edgecompress.models as _models  # noqa: E402

_models.small_cnn_w16 = small_cnn_w16  # a builder importable by name for these tests


def test_save_load_with_builder_rebuilds_the_original_class(fused, digits, tmp_path):
    path = fused.save(tmp_path / "m.ecm")
    # small_cnn_w16 is defined in this test module, not in edgecompress.models: a name in the
    # file is not enough to import it (tests/safety), so the caller passes it
    dm = ec.DeployableModel.load(path, builder=small_cnn_w16)
    assert type(dm.model).__name__ == "SmallCNN"
    assert isinstance(dm.model.features[0][1], torch.nn.Identity)  # the fused BN stays fused
    x = digits.samples("val", 32)
    assert torch.equal(dm.model(x), fused.model(x))
    assert dm.report.stages[0].stage == "input" and dm.history[0]["pass"] == "fuse"


def test_load_without_builder_uses_the_export_program(fused, digits, tmp_path):
    path = fused.save(tmp_path / "m.ecm", builder="no.such.module:fn")
    dm = ec.DeployableModel.load(path)
    x = digits.samples("val", 8)
    assert torch.allclose(dm.model(x), fused.model(x), atol=1e-6)


class _BatchOfOne(torch.nn.Module):
    """Flattens the whole batch into one row, so only a batch of 1 exports."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(x.reshape(1, -1))


def test_static_batch_program_runs_bigger_batches_in_pieces(digits, tmp_path):
    torch.manual_seed(0)
    dm = ec.DeployableModel(_BatchOfOne().eval(), InputSpec((1, 1, 16, 16)))
    path = dm.save(tmp_path / "m.ecm", builder="no.such.module:fn")
    loaded = ec.DeployableModel.load(path)
    assert loaded.model.static_batch == 1
    x = digits.samples("val", 8)
    with torch.no_grad():
        want = torch.cat([dm.model(row[None]) for row in x])
        assert torch.allclose(loaded.model(x), want, atol=1e-6)  # not only through a runner


def test_structure_replay_reshapes_any_width_of_the_same_architecture(fused, digits, tmp_path):
    path = fused.save(tmp_path / "m.ecm")
    dm = ec.DeployableModel.load(path, builder=lambda: small_cnn(width=8, num_classes=3))
    x = digits.samples("val", 8)
    assert torch.equal(dm.model(x), fused.model(x))


def test_builder_of_another_architecture_is_a_clear_error(fused, tmp_path):
    from edgecompress.models import small_resnet

    path = fused.save(tmp_path / "m.ecm")
    with pytest.raises(ec.ArtifactError, match="different builder"):
        ec.DeployableModel.load(path, builder=small_resnet)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/edgecompress_pwned",))


def _evil_pickle() -> bytes:
    return pickle.dumps({"weight": _Evil()})


def test_malicious_pickle_is_refused_not_executed(fused, tmp_path):
    marker = "/tmp/edgecompress_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    good = fused.save(tmp_path / "m.ecm")
    evil = tmp_path / "evil.ecm"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, _evil_pickle() if name == "weights.pt" else src.read(name))
    with pytest.raises(ec.ArtifactError, match="refused"):
        ec.DeployableModel.load(evil)
    assert not os.path.exists(marker)


def test_malicious_pickle_inside_the_export_program_is_refused(fused, tmp_path):
    marker = "/tmp/edgecompress_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    good = fused.save(tmp_path / "m.ecm", builder="no.such.module:fn")
    evil = tmp_path / "evil2.ecm"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "program.pt2":
                buf = io.BytesIO()
                with zipfile.ZipFile(io.BytesIO(data)) as p_src, zipfile.ZipFile(buf, "w") as p_dst:
                    for inner in p_src.namelist():
                        inner_data = p_src.read(inner)
                        p_dst.writestr(inner, _evil_pickle() if inner.endswith(".pt") else inner_data)
                data = buf.getvalue()
            dst.writestr(name, data)
    with pytest.raises(ec.ArtifactError, match="refused"):
        ec.DeployableModel.load(evil)
    assert not os.path.exists(marker)


def test_truncated_and_foreign_files(fused, tmp_path):
    good = fused.save(tmp_path / "m.ecm")
    cut = tmp_path / "cut.ecm"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ec.ArtifactError, match="truncated or corrupt"):
        ec.DeployableModel.load(cut)
    other = tmp_path / "other.ecm"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "something-else", "version": 1}))
        zf.writestr("weights.pt", b"")
    with pytest.raises(ec.ArtifactError, match="unsupported model file"):
        ec.DeployableModel.load(other)


def test_ecm_loads_as_a_runner(fused, digits, tmp_path):
    art = fused.export("torch", tmp_path / "m.ecm", benchmark_runs=3)
    assert art.parity.passed and art.parity.max_abs_diff == 0
    r = ec.load(art.path)
    x = digits.samples("val", 4)
    assert torch.allclose(torch.from_numpy(r(x.numpy())), fused.model(x), atol=1e-6)
    with open(art.path, "r+b") as fh:  # corrupt one byte: the sidecar sha256 must catch it
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ec.ArtifactError, match="sha256"):
        ec.load(art.path)
