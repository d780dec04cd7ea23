"""The report says what was measured on what, with spread and load; report.md renders."""

from __future__ import annotations

import re
import zipfile
from html.parser import HTMLParser

import markdown
import pytest
import torch

import edgecompress as ec
from edgecompress.compress import compress
from edgecompress.models import small_cnn
from edgecompress.report import StageMetrics

SPREAD = re.compile(r"^\d+\.\d+ \(\d+\.\d+–\d+\.\d+\)$")


class _Tables(HTMLParser):
    """Collects the rendered tables (rows of cell texts) and the heading levels."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[int] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _render(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(markdown.markdown(text, extensions=["tables"]))
    return parser


@pytest.fixture(scope="module")
def compressed(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    recipe = {"passes": [{"pass": "fuse"}, {"pass": "quantize_ptq", "samples": 64}]}
    torch.manual_seed(0)  # an untrained model: these tests read the report, not the accuracy
    result = compress(small_cnn(width=8), digits, recipe, out, ["onnx", "ncnn"], benchmark_runs=5)
    return result, out


def test_report_md_renders_both_tables_and_the_failures(compressed):
    result, out = compressed
    text = (out / "report.md").read_text()
    page = _render(text)
    assert len(page.tables) == 2, text
    stages, artifacts = page.tables
    assert all(len(row) == len(stages[0]) for row in stages)
    assert all(len(row) == len(artifacts[0]) == 8 for row in artifacts), artifacts
    assert artifacts[0][4] == "max|diff|" and artifacts[1][0] == "onnx"
    assert page.headings[0] == 1 and all(b - a <= 1 for a, b in zip(page.headings, page.headings[1:]))
    assert "export to `ncnn`" in text and "Formats that can" in text  # the refusal is listed
    assert "ncnn" in result.dm.report.export_failures()


def test_stage_rows_say_what_they_measured_and_artifacts_what_a_device_gets(compressed):
    result, out = compressed
    stages, artifacts = _render((out / "report.md").read_text()).tables
    column = stages[0].index("measured on")
    by_stage = {row[0]: row for row in stages[1:]}
    assert by_stage["fuse"][column] == "torch (float)"
    assert by_stage["quantize_ptq"][column] == "simulated INT8 (torch)"
    assert artifacts[1][2] == "int8-static"
    assert "simulated INT8 torch model" in str(result.dm.report)  # the note under the tables
    for row in [*stages[1:], *artifacts[1:]]:
        assert SPREAD.match(row[-2 if row in stages else -1]), row  # p50 (p10–p90)


def test_latency_spread_and_load_are_recorded(compressed):
    report = compressed[0].dm.report
    for m in [*report.stages, *report.artifacts]:
        assert m.latency_p10_ms <= m.latency_ms <= m.latency_p90_ms
        assert m.load_1min is not None and m.load_1min >= 0
    assert ec.Report.from_dict(report.to_dict()).stages[0].latency_p90_ms == report.stages[0].latency_p90_ms


def test_a_busy_machine_is_called_out():
    quiet = ec.Report(stages=[StageMetrics("input", "torch-float", latency_ms=1.0, load_1min=0.0)])
    busy = ec.Report(stages=[StageMetrics("input", "torch-float", latency_ms=1.0, load_1min=1e6)])
    assert not any("busy" in r for r in quiet.remarks())
    assert any("busy" in r for r in busy.remarks()) and "busy" in busy.to_markdown()


def test_compressed_sizes_appear_when_measured(digits, tmp_path):
    measure = ec.Measure(compressed=True, accuracy=False, latency=False, macs=False)
    dm = ec.Pipeline([ec.passes.UnstructuredPrune(sparsity=0.8)], measure=measure).run(
        small_cnn(width=16), digits)
    dm.export("onnx", tmp_path / "m.onnx", compressed=True, benchmark_runs=0)
    stages, artifacts = _render(dm.report.to_markdown()).tables
    assert stages[0][-1] == artifacts[0][-1] == "xz size"
    dense, sparse = (dm.report.stages[i].compressed_bytes["xz"] for i in (0, 1))
    assert sparse < 0.6 * dense  # zeros compress away: the number shown is measured
    assert stages[2][-1].endswith("kB")


def test_ecm_keeps_calibration_samples_only_when_asked(compressed, tmp_path):
    dm = compressed[0].dm
    assert dm.quant_recipe.calib_samples.shape[0] == 64
    builder = "edgecompress.models:small_cnn"  # the fixture's model, rebuilt without torch.export
    lean = dm.save(tmp_path / "lean.ecm", builder=builder, portable=False)
    full = dm.save(tmp_path / "full.ecm", builder=builder, portable=False, keep_samples=True)
    assert "calib_samples.pt" not in zipfile.ZipFile(lean).namelist()
    assert "calib_samples.pt" in zipfile.ZipFile(full).namelist()
    assert lean.stat().st_size < full.stat().st_size
    assert ec.DeployableModel.load(lean).quant_recipe.calib_samples is None
    assert ec.DeployableModel.load(full).quant_recipe.calib_samples.shape[0] == 64
    assert "calib_samples.pt" not in zipfile.ZipFile(compressed[1] / "model.ecm").namelist()
