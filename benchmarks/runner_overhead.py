"""Runner overhead: ec.load(...).benchmark() vs a bare InferenceSession.run loop.

Both time the same ONNX model (a ResNet-18-sized network at 224×224, random weights) with the same
threads; the goal is a median within 5 % of the bare loop. Runs are interleaved in rounds so that
machine load affects both sides alike.

    python benchmarks/runner_overhead.py --threads 2 --runs 200 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import edgecompress as ec


def build_onnx(path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=1000).eval()
    from edgecompress.export.onnx import export_float_onnx

    export_float_onnx(model, torch.randn(1, 3, 224, 224), path, dynamic_batch=False)


def bare_loop(path: Path, threads: int, runs: int, x: np.ndarray) -> list[float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(10):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        build_onnx(path)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        runner = ec.load(path, threads=args.threads)
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(statistics.median(bare_loop(path, args.threads, args.runs, x)) * 1000)
            ours.append(runner.benchmark(warmup=10, runs=args.runs, x=x, with_system=False).p50_ms)
    bare_ms, ours_ms = statistics.median(bare), statistics.median(ours)
    ratio = ours_ms / bare_ms
    result = {"model": "resnet18 224x224 fp32", "threads": args.threads, "runs": args.runs,
              "rounds": args.rounds, "bare_p50_ms_per_round": bare, "runner_p50_ms_per_round": ours,
              "bare_p50_ms": bare_ms, "runner_p50_ms": ours_ms, "ratio": ratio,
              "within_5_percent": abs(ratio - 1) <= 0.05, "system": ec.system_status()}
    print(f"{'loop':<24}{'median ms':>10}")
    print(f"{'bare InferenceSession':<24}{bare_ms:>10.3f}")
    print(f"{'ec Runner.benchmark':<24}{ours_ms:>10.3f}")
    print(f"ratio {ratio:.3f} ({'within' if result['within_5_percent'] else 'NOT within'} 5 %)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner_overhead.json").write_text(json.dumps(result, indent=2))
    (args.out / "runner_overhead.md").write_text(
        "| loop | median p50 ms |\n|---|---:|\n"
        f"| bare `InferenceSession.run` | {bare_ms:.3f} |\n"
        f"| `ec.load(...).benchmark()` | {ours_ms:.3f} |\n\n"
        f"Ratio {ratio:.3f} ({args.rounds} interleaved rounds of {args.runs} runs, "
        f"{args.threads} threads; CPU load average at the end: "
        f"{os.getloadavg()[0]:.1f}).\n")


if __name__ == "__main__":
    main()
