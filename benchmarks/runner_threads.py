"""Sharing a TFLite runner across threads: one runner behind its lock vs one runner per thread.

edgecompress serialises calls of a runner whose runtime keeps per-interpreter state (LiteRT's
input/output tensors). This measures what that costs against giving every thread its own
interpreter, on the same model, interleaved in rounds so machine load affects both alike.
Outputs are checked equal to sequential calls in both modes.

    python benchmarks/runner_threads.py --threads 8 --calls 300 --rounds 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from edgecompress.models import small_cnn


def run_threads(runners: list, inputs: np.ndarray) -> tuple[float, np.ndarray]:
    """Each thread t calls runners[t % len(runners)] on its own inputs; wall time and outputs."""
    n_threads, calls = inputs.shape[:2]
    out: list[list[np.ndarray]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)

    def work(t: int) -> None:
        runner = runners[t % len(runners)]
        barrier.wait()
        out[t] = [runner(x) for x in inputs[t]]

    workers = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - t0, np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--width", type=int, default=32, help="SmallCNN width (32x32 inputs)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    data = ec.data.digits(image_size=32, batch_size=64, seed=0)
    dm = ec.Pipeline([], measure=False).run(small_cnn(width=args.width).eval(), data)
    with tempfile.TemporaryDirectory() as tmp:
        path = dm.export("tflite", Path(tmp) / "m.tflite", benchmark_runs=0).path
        shared = [ec.load(path, threads=1)]
        own = [ec.load(path, threads=1) for _ in range(args.threads)]
        x = np.random.default_rng(0).standard_normal(
            (args.threads, args.calls, 1, 1, 32, 32)).astype(np.float32)
        expected = np.asarray([[shared[0](xi) for xi in xt] for xt in x])
        times: dict[str, list[float]] = {"one runner, locked": [], "one runner per thread": []}
        for _ in range(args.rounds):
            for mode, runners in (("one runner, locked", shared), ("one runner per thread", own)):
                seconds, got = run_threads(runners, x)
                assert np.array_equal(got, expected), f"{mode}: outputs differ from sequential"
                times[mode].append(seconds)
    calls = args.threads * args.calls
    rows = {mode: {"median_s": statistics.median(t), "calls_per_s": calls / statistics.median(t),
                   "runs_s": t} for mode, t in times.items()}
    result = {"command": "python benchmarks/runner_threads.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "threads": args.threads, "calls_per_thread": args.calls, "rounds": args.rounds,
              "model": f"SmallCNN width {args.width}, 32x32x1, fp32 tflite",
              "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "modes": rows,
              "outputs_equal_sequential": True}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner_threads.json").write_text(json.dumps(result, indent=2))
    lines = ["# Sharing a TFLite runner across threads", "", f"`{result['command']}`", "",
             f"{args.threads} threads x {args.calls} calls, {args.rounds} interleaved rounds, "
             f"{result['model']}, {os.cpu_count()} CPUs, load average "
             f"{', '.join(f'{v:.1f}' for v in result['loadavg'])}", "",
             "| mode | median wall time (s) | calls/s |", "|---|---|---|"]
    lines += [f"| {m} | {r['median_s']:.3f} | {r['calls_per_s']:.0f} |" for m, r in rows.items()]
    lines += ["", "Both modes return exactly the sequential outputs."]
    (args.out / "runner_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
