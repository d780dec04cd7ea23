"""Plugins: a third-party package registers a pass and an export format through entry points."""

import sys
from pathlib import Path

import pytest

import edgecompress as ec
from edgecompress.formats import FORMATS
from edgecompress.passes import PASSES
from edgecompress.registry import read_plugins as load_plugins

PLUGIN_DIR = Path(__file__).parent / "plugin_pkg"


@pytest.fixture()
def installed_plugin(tmp_path, monkeypatch):
    """Install the plugin as a real distribution (a dist-info with entry_points.txt) on sys.path."""
    dist = tmp_path / "ec_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ec-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[edgecompress.passes]\nscale_logits = ec_demo_plugin:ScaleLogits\n\n"
        "[edgecompress.exporters]\ntraced = ec_demo_plugin:TRACED_FORMAT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    load_plugins(force=True)
    yield
    PASSES.pop("scale_logits", None)
    FORMATS.pop("traced", None)
    sys.modules.pop("ec_demo_plugin", None)


def test_entry_point_pass_and_exporter_work_end_to_end(installed_plugin, trained_cnn, digits, tmp_path):
    pipe = ec.Pipeline.from_recipe({"passes": [{"pass": "fuse"}, {"pass": "scale_logits", "factor": 3.0}]})
    dm = pipe.run(trained_cnn, digits)
    assert dm.report.stages[-1].notes == {"scaled_by": 3.0}
    assert dm.report.stages[-1].accuracy == dm.report.stages[0].accuracy  # argmax unchanged
    art = dm.export("traced", tmp_path / "m.traced", benchmark_runs=2)
    assert art.parity.passed and art.parity.max_abs_diff < 1e-4
    runner = ec.load(art.path)
    assert type(runner).__name__ == "TracedRunner"


def test_register_pass_in_process(trained_cnn, digits):
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        from ec_demo_plugin import ScaleLogits

        ec.register_pass(ScaleLogits)
        assert ec.passes.get_pass("scale_logits") is ScaleLogits
        with pytest.raises(ec.ConfigError, match="Pass subclass"):
            ec.register_pass(int)
    finally:
        PASSES.pop("scale_logits", None)
        sys.path.remove(str(PLUGIN_DIR))
