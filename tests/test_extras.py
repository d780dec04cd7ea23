"""A feature whose extra is missing raises MissingExtraError naming the extra to install.

The checks run in one fresh interpreter in which no optional package can be imported
(``sys.modules[name] = None`` makes every import of it fail as if it were not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKED = ["torch_pruning", "torchvision", "litert_torch", "ai_edge_litert", "ai_edge_quantizer",
           "pnnx", "ncnn", "tensorrt", "matplotlib"]

SCRIPT = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import edgecompress as ec
from edgecompress.models import small_cnn
ec.set_progress(False)
data = ec.data.digits(image_size=16, batch_size=64, seed=0)
dm = ec.Pipeline([], measure=False).run(small_cnn(width=8), data)
CASES = {{
    "prune": lambda: ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=False).run(
        small_cnn(width=8), data),
    "vision": lambda: ec.students.build("mobilenet_v3_small", data),
    "vision-distill": lambda: ec.Pipeline(
        [ec.Distill(student="mobilenet_v3_small", epochs=1, max_batches=1)], measure=False
    ).run(small_cnn(width=8), data),
    "tflite": lambda: dm.export("tflite", "m.tflite"),
    "ncnn": lambda: dm.export("ncnn", "m_ncnn"),
    "plot": lambda: __import__("edgecompress.plot").plot.plot_report(dm.report, "p.png"),
}}
for case, fn in CASES.items():
    try:
        fn()
        print(case, "NO ERROR")
    except ec.MissingExtraError as exc:
        print(case, "MissingExtraError", exc.extra, "|", exc)
    except Exception as exc:
        print(case, type(exc).__name__, "|", str(exc).replace(chr(10), " ")[:300])
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=tmp_path_factory.mktemp("extras"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


@pytest.mark.parametrize("case, extra", [("prune", "prune"), ("vision", "vision"),
                                         ("vision-distill", "vision"), ("tflite", "tflite"),
                                         ("ncnn", "ncnn"), ("plot", "plot")])
def test_missing_extra_is_named(outcomes, case, extra):
    outcome = outcomes.get(case, "not run")
    assert outcome.startswith(f"MissingExtraError {extra} |"), outcome
    assert f"pip install 'edgecompress[{extra}]'" in outcome
