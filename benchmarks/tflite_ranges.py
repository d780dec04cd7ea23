"""TFLite static INT8 with and without the recipe's activation ranges (``recipe_ranges=``).

The pretrained CIFAR ResNet-20 is quantized with a PTQ percentile recipe and with 1 epoch of
QAT on one half of a seeded subset of the CIFAR-10 JPEGs; each recipe is exported to TFLite
twice (recipe ranges imported, or min/max re-calibrated) and both files are run by LiteRT on
the other half. Agreement and logit differences are against the simulated INT8 torch model.

    python benchmarks/tflite_ranges.py ../shared/data/cifar10-jpeg-test/test.tar \\
        --resnet20 ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgecompress as ec  # noqa: E402
from cifar_resnet import cifar_bundle, load_resnet  # noqa: E402

RECIPES = {"PTQ percentile": lambda: ec.passes.QuantizePTQ(method="percentile"),
           "QAT, 1 epoch": lambda: ec.passes.QuantizeQAT(epochs=1, lr=1e-4)}


def compare(path: Path, x: torch.Tensor, reference: np.ndarray) -> dict[str, float]:
    runner = ec.load(path, threads=1)
    out = np.concatenate([runner(x[i:i + 1].numpy()) for i in range(len(x))])
    diff = np.abs(out - reference)
    return {"top1_agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}


def run_recipe(name: str, args: argparse.Namespace, data: ec.DataBundle) -> dict[str, Any]:
    model = load_resnet(args.resnet20)
    dm = ec.Pipeline([ec.passes.Fuse(), RECIPES[name]()], measure=False, seed=0).run(model, data)
    x = data.samples("val", args.limit)
    with torch.no_grad():
        reference = dm.model(x).numpy()
    row: dict[str, Any] = {"recipe": name, "samples": len(x)}
    with tempfile.TemporaryDirectory() as tmp:
        for imported in (False, True):
            art = dm.export("tflite", Path(tmp) / f"{imported}.tflite", recipe_ranges=imported,
                            benchmark_runs=0, on_parity_fail="warn")
            key = "recipe_ranges" if imported else "own_minmax"
            row[key] = {**compare(art.path, x, reference),
                        "imported": art.notes.get("recipe_ranges_imported", 0)}
    return row


def markdown(result: dict[str, Any]) -> str:
    rows = "".join(
        f"| {r['recipe']} | {r['own_minmax']['top1_agreement']:.1%} | "
        f"{r['own_minmax']['mean_abs_diff']:.3f} | {r['own_minmax']['max_abs_diff']:.2f} | "
        f"{r['recipe_ranges']['top1_agreement']:.1%} | {r['recipe_ranges']['mean_abs_diff']:.3f} | "
        f"{r['recipe_ranges']['max_abs_diff']:.2f} | {r['recipe_ranges']['imported']} |\n"
        for r in result["rows"])
    n = result["rows"][0]["samples"]
    return ("# TFLite INT8: the recipe's activation ranges vs re-calibrated min/max\n\n"
            f"Command: `{result['command']}`\n\n"
            f"Pretrained CIFAR ResNet-20, CIFAR-10 JPEGs: {n} images to calibrate / train, "
            f"{n} others to compare on. Against the simulated INT8 torch model.\n\n"
            "| recipe | agree (own min/max) | mean abs diff | max abs diff | agree (recipe "
            "ranges) | mean abs diff | max abs diff | tensors imported |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|\n" + rows +
            f"\nWall time {result['seconds'] / 60:.1f} min, load average at the end "
            f"{result['load_average_end']:.1f}.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="CIFAR-10 JPEG tar or folder")
    ap.add_argument("--resnet20", required=True, help="pretrained CIFAR ResNet-20 state dict")
    ap.add_argument("--limit", type=int, default=1000, help="images per half")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = cifar_bundle(args.data, batch_size=64, seed=0, limit=2 * args.limit)
    rows = [run_recipe(name, args, data) for name in RECIPES]
    result = {"command": "python benchmarks/tflite_ranges.py " + " ".join(sys.argv[1:]),
              "rows": rows, "seconds": time.time() - t0, "load_average_end": os.getloadavg()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tflite_ranges.json").write_text(json.dumps(result, indent=2))
    (out / "tflite_ranges.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
