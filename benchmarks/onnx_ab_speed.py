"""Latency of two ONNX files side by side: one process, 1 thread, no spinning, single runs
interleaved (the order alternating), p50 of each and their ratio, with the load average.

    nice -n 10 python benchmarks/onnx_ab_speed.py before.onnx after.onnx --runs 1500
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def interleaved(paths: list[str], runs: int) -> dict[str, np.ndarray]:
    """Milliseconds of ``runs`` single runs of each file, alternating which goes first."""
    sessions = [session(p) for p in paths]
    inp = sessions[0].get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for s in sessions:
        for _ in range(20):
            s.run(None, x)
    times: list[list[float]] = [[] for _ in paths]
    for i in range(runs):
        order = range(len(paths)) if i % 2 == 0 else reversed(range(len(paths)))
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, x)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {p: np.array(t) for p, t in zip(paths, times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    print("load", [round(v, 2) for v in os.getloadavg()])
    result = interleaved([args.a, args.b], args.runs)
    for path, ms in result.items():
        print(f"p50 {np.median(ms):.3f} ms (p10 {np.percentile(ms, 10):.3f}, "
              f"p90 {np.percentile(ms, 90):.3f})  {path}")
    a, b = (np.median(v) for v in result.values())
    print(f"ratio b/a p50 {b / a:.3f}; load {[round(v, 2) for v in os.getloadavg()]}")


if __name__ == "__main__":
    main()
