"""INT8 of a YOLOv8n raw head: which parts kept float (decode tail always; DFL conv; last box
convs), matched-box agreement with the simulated INT8 model and mAP against the FP32 model's
own detections (pseudo-labels: the FP32 model scores 1.0). Random init (BatchNorm statistics
from one batch, class biases zeroed): a proxy until a trained detector is used, see
benchmarks/results/detect_int8_head.md.

    PYTHONPATH=src:tests python benchmarks/detect_int8_head.py --size 64 \
        --formats onnx,tflite --variants all_int8,dfl_float
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.convert.detector import prepare
from edgecompress.data.bundle import Preprocess
from edgecompress.runtime.detect import decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_detect_formats import yolov8n  # noqa: E402  (the tests' BatchNorm-calibrated builder)

BOX_CONVS = [f"model.model.22.cv2.{i}.2" for i in range(3)]
VARIANTS = {"all_int8": [], "dfl_float": ["model.model.22.dfl.conv"],
            "dfl_and_box_convs_float": ["model.model.22.dfl.conv", *BOX_CONVS]}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "ncnn": "_ncnn"}


def pseudo_labelled(yolo: torch.nn.Module, size: int) -> ec.DataBundle:
    """32 random images labelled with the FP32 model's own detections."""
    torch.manual_seed(1)
    x = torch.rand(32, 3, size, size)
    wrapped = prepare(yolo, x[:1])
    with torch.no_grad():
        targets = decode({"output": wrapped(x).numpy()}, wrapped.edgecompress_detection,
                         (size, size))
    val = [(x[i:i + 8], targets[i:i + 8]) for i in range(0, 32, 8)]
    return ec.DataBundle(example_input=x[:1], val=val, calib=[x],
                         preprocess=Preprocess(resize="letterbox"))


def measure(dm: ec.DeployableModel, fmt: str, work: Path, variant: str) -> dict:
    """Export one format (kept even when it fails) and read its detection parity."""
    start = time.time()
    try:
        art = dm.export(fmt, work / f"v8{SUFFIX[fmt]}", benchmark_runs=0, overwrite=True,
                        on_parity_fail="keep")
    except Exception as exc:  # a benchmark records every failure and goes on
        return {"variant": variant, "fmt": fmt, "error": f"{type(exc).__name__}: {exc}"[:500]}
    extra = art.parity.metric_extra
    return {"variant": variant, "fmt": fmt, "s": round(time.time() - start, 1),
            "max_abs_diff": art.parity.max_abs_diff, "agreement": art.parity.metric_value,
            "strict": extra.get("strict_agreement"),
            "map": art.metadata.get("detection_map") or {},
            "float_tail": art.notes.get("float_detection_tail")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--formats", default="onnx,tflite")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    yolo = yolov8n()
    data = pseudo_labelled(yolo, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            step = ec.passes.QuantizePTQ(samples=32, skip=tuple(VARIANTS[variant]))
            dm = ec.Pipeline([step], measure=False).run(yolo, data)
            for fmt in args.formats.split(","):
                rows.append(measure(dm, fmt, Path(tmp), variant))
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
