"""Speed of the two COCO mAP backends edgecompress can use (same numbers, measured here).

Generates ``--images`` images of random ground-truth boxes and noisy, partly wrong predictions
(seeded), then times ``edgecompress.detection_map`` with each backend, interleaved.

    PYTHONPATH=src python benchmarks/coco_map_backends.py --images 500 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgecompress.mean_ap import BACKENDS, detection_map


def synthetic(n: int, classes: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Targets with 1-15 boxes per image, predictions = jittered targets plus false positives."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        m = int(rng.integers(1, 16))
        xy = rng.uniform(0, 280, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        labels = rng.integers(0, classes, m)
        targets.append({"boxes": boxes, "labels": labels})
        extra = int(rng.integers(0, 10))
        fp = rng.uniform(0, 300, (extra, 2))
        p_boxes = np.concatenate([boxes + rng.normal(0, 4, boxes.shape),
                                  np.concatenate([fp, fp + rng.uniform(8, 80, (extra, 2))], 1)])
        p_labels = np.concatenate([np.where(rng.random(m) < 0.9, labels,
                                            rng.integers(0, classes, m)),
                                   rng.integers(0, classes, extra)])
        preds.append({"boxes": p_boxes.astype(np.float32), "labels": p_labels,
                      "scores": rng.random(m + extra).astype(np.float32)})
    return preds, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/coco_map_backends")
    args = ap.parse_args()
    preds, targets = synthetic(args.images, args.classes, seed=0)
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    values: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for b in BACKENDS:
            t0 = time.perf_counter()
            result = detection_map(preds, targets, backend=b)
            times[b].append(time.perf_counter() - t0)
            values[b] = {"map50": result.map50, "map50_95": result.map50_95}
    rows = {b: {"median_s": float(np.median(t)), "min_s": float(min(t)), **values[b]}
            for b, t in times.items()}
    record = {"command": f"python benchmarks/coco_map_backends.py --images {args.images} "
                         f"--repeats {args.repeats}", "images": args.images,
              "classes": args.classes, "load_1min_before": load_before,
              "load_1min_after": os.getloadavg()[0], "backends": rows}
    lines = [f"# COCO mAP backends: {args.images} images, {args.classes} classes",
             "", f"`{record['command']}` (load {load_before:.2f} → {os.getloadavg()[0]:.2f})", "",
             "| backend | median s | min s | mAP@0.5 | mAP@0.5:0.95 |", "|---|---|---|---|---|"]
    lines += [f"| {b} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['map50']:.6f} | "
              f"{r['map50_95']:.6f} |" for b, r in rows.items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
