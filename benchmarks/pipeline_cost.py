"""What the library costs: wall time and peak RSS of PTQ + ONNX export + verification vs ORT's own path.

For each model, in separate processes (so peak RSS is each path's own): edgecompress
(``QuantizePTQ`` + ``dm.export("onnx")`` with its parity check) and ONNX Runtime's path (float
ONNX export + ``quantize_static``), both with the same calibration method and samples. The FP32
working set is the RSS after building the model and running one calibration batch through it.
Goal (issue #25): edgecompress ≤ 1.3× ORT's wall time, peak ≤ 2× the FP32 working set.

    nice -n 10 .venv/bin/python benchmarks/pipeline_cost.py --data ../shared/data/cifar10-jpeg-test/test.tar \
        --cifar-weights ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th

Writes benchmarks/results/pipeline_cost.json and pipeline_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import edgecompress as ec  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ["resnet20", "resnet18", "resnet50", "vit_b_32"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="cifar10-jpeg-test/test.tar")
    ap.add_argument("--cifar-weights", help="resnet20-*.th (else random init)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"))
    ap.add_argument("--paths", nargs="+", default=["ort", "edgecompress"],
                    choices=("ort", "edgecompress", "edgecompress_ortcal"),
                    help="edgecompress_ortcal: the export lets ORT calibrate every tensor again "
                         "(calibration='onnxruntime', what edgecompress did before calibrating once)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: model, path
    ap.add_argument("--out", default="pipeline_cost")
    return ap.parse_args()


def build(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, ec.DataBundle]:
    if name == "resnet20":
        from cifar_resnet import cifar_bundle, load_resnet, resnet20

        model = load_resnet(args.cifar_weights) if args.cifar_weights else resnet20().eval()
        return model, cifar_bundle(args.data, calib_size=args.calib, limit=2 * args.calib)
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    data = ec.data.image_folder(args.data, image_size=224, limit=2 * args.calib, calib_size=args.calib)
    return model, data


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name: str, path: str, args: argparse.Namespace) -> dict[str, Any]:
    model, data = build(name, args)
    with torch.no_grad():
        model(data.calibration_inputs(min(32, args.calib)))
    working = rss_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if path.startswith("edgecompress"):
            dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=args.calib, method=args.method)],
                             measure=False).run(model, data)
            calibration = "onnxruntime" if path == "edgecompress_ortcal" else "reuse"
            art = dm.export("onnx", Path(tmp) / "m.onnx", benchmark_runs=0, parity_samples=64,
                            calibration=calibration)
            extra = {"parity": str(art.parity), "bytes": art.size_bytes,
                     **{k: v for k, v in art.notes.items() if k.startswith("ranges_")}}
        else:
            extra = ort_path(model, data, Path(tmp), args)
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(rss_mb(), 1),
            "fp32_working_set_mb": round(working, 1), **extra}


def ort_path(model: torch.nn.Module, data: ec.DataBundle, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from quantize import ort_direct

    from edgecompress.export.onnx import export_float_onnx

    calib = data.calibration_inputs(args.calib).numpy()
    export_float_onnx(model, torch.from_numpy(calib[:1]), tmp / "f.onnx")
    if args.method != "minmax":  # ort_direct uses ORT's default calibration (minmax)
        raise SystemExit("pipeline_cost compares MinMax calibration only")
    ort_direct(tmp / "f.onnx", tmp / "q.onnx", calib, recommended=True)
    return {"bytes": (tmp / "q.onnx").stat().st_size}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("EDGECOMPRESS_PROGRESS", "0")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], args.one[1], args)), flush=True)
        return
    command = "nice -n 10 .venv/bin/python benchmarks/pipeline_cost.py " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {"command": command, "load_start": os.getloadavg(), "models": {}}
    for name in args.models:
        row: dict[str, Any] = {}
        for path in args.paths * 2:  # alternate: load drifts
            proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", name, path],
                                  capture_output=True, text=True)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            row.setdefault(path, []).append(json.loads(found[-1][7:]) if found else
                                            {"error": proc.stderr[-800:]})
        ok = all("wall_s" in r for runs in row.values() for r in runs)
        if ok:
            walls = {p: float(np.median([r["wall_s"] for r in runs])) for p, runs in row.items()}
            peak = max(r["peak_rss_mb"] for r in row["edgecompress"])
            working = min(r["fp32_working_set_mb"] for r in row["edgecompress"])
            row["summary"] = {"wall_ratio": round(walls["edgecompress"] / walls["ort"], 2),
                              **({"ortcal_wall_s": walls["edgecompress_ortcal"]}
                                 if "edgecompress_ortcal" in walls else {}),
                              "ec_wall_s": walls["edgecompress"], "ort_wall_s": walls["ort"],
                              "peak_vs_working_set": round(peak / working, 2)}
        result["models"][name] = row
        print(name, json.dumps(row.get("summary", row)), flush=True)
    result["load_end"] = os.getloadavg()
    lines = ["# Library cost: PTQ + export + verification vs ORT quantize_static", "", f"`{command}`", "",
             f"Load average {result['load_start'][0]:.1f} → {result['load_end'][0]:.1f} (2 shared cores); "
             f"median of 2 alternating runs each; {args.method} calibration on {args.calib} samples.", "",
             "| model | edgecompress s | ORT s | ratio (goal ≤ 1.3) | peak / FP32 working set (goal ≤ 2) "
             "| edgecompress, ORT calibrating again s |",
             "|---|---|---|---|---|---|"]
    for name, row in result["models"].items():
        s = row.get("summary")
        lines.append(f"| {name} | {s['ec_wall_s']} | {s['ort_wall_s']} | {s['wall_ratio']}× | "
                     f"{s['peak_vs_working_set']}× | {s.get('ortcal_wall_s', '–')} |"
                     if s else f"| {name} | failed | | | | |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
