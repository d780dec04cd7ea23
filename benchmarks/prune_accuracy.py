"""Pruning on real data: Fashion-MNIST CNN, structured 30 % and unstructured 80 %, with fine-tuning.

Trains a SmallCNN, then runs three pipelines on it and reports top-1 on the 10k test set:
``StructuredPrune(ratio=0.3, round_to=8, finetune=FineTune(epochs=2))``, the same with
``scope="local"`` at the parameter count the first reached, and
``UnstructuredPrune(sparsity=0.8, schedule="gradual", steps=2, finetune=FineTune(epochs=1))``.
Goal (issue 3): each loses at most 1 point of top-1 against the unpruned model.

    python benchmarks/prune_accuracy.py ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import edgecompress as ec  # noqa: E402
from _harness import Run, parser  # noqa: E402
from edgecompress.models import small_cnn  # noqa: E402
from edgecompress.training import TrainConfig, accuracy, cross_entropy_loss, train  # noqa: E402


def run(args: argparse.Namespace) -> dict:
    data = ec.data.idx(args.data, batch_size=args.batch_size, seed=args.seed,
                       limit_train=args.limit_train)
    torch.manual_seed(args.seed)
    model = small_cnn(in_channels=1, num_classes=10, width=args.width)
    t0 = time.perf_counter()
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=args.epochs, lr=3e-3),
          val_loader=data.val, desc="dense", seed=args.seed)
    dense_acc = accuracy(model, data.val)
    rows = [{"model": "dense", "accuracy": dense_acc, "params": ec.measure.count_params(model),
             "macs": ec.measure.count_macs(model, data.example_input),
             "sparsity": ec.measure.sparsity(model),
             "seconds": round(time.perf_counter() - t0, 1)}]
    measure = ec.Measure(latency=False, compressed=True)
    def structured(scope: str, **goal: float) -> ec.passes.StructuredPrune:
        return ec.passes.StructuredPrune(round_to=8, scope=scope, **goal,
                                         finetune=ec.FineTune(epochs=args.ft_epochs, lr=1e-3))

    recipes = {
        "structured 30% + 2 ep": lambda rows: structured("global", ratio=0.3),
        # which scope is better at one size: local pruning to the global row's parameter count
        "structured local, same params + 2 ep": lambda rows: structured(
            "local", target_params=rows[-1]["params"] / rows[0]["params"]),
        "unstructured 80% gradual + 2 ep": lambda rows: ec.passes.UnstructuredPrune(
            sparsity=0.8, schedule="gradual", steps=2,
            finetune=ec.FineTune(epochs=max(args.ft_epochs // 2, 1), lr=1e-3)),
    }
    for label, make in recipes.items():
        t0 = time.perf_counter()
        dm = ec.Pipeline([make(rows)], measure=measure, seed=args.seed).run(model, data)
        s = dm.report.stages[-1]
        rows.append({"model": label, "accuracy": s.accuracy, "params": s.params, "macs": s.macs,
                     "sparsity": s.sparsity, "compressed_xz": (s.compressed_bytes or {}).get("xz"),
                     "dense_xz": (dm.report.stages[0].compressed_bytes or {}).get("xz"),
                     "loss_points": 100 * (dense_acc - s.accuracy),
                     "meets_goal": 100 * (dense_acc - s.accuracy) <= 1.0,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return {"data": data.describe(), "width": args.width, "epochs": args.epochs,
            "ft_epochs": args.ft_epochs, "limit_train": args.limit_train,
            "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Pruning accuracy on Fashion-MNIST (SmallCNN, width {result['width']})", "",
             f"Dense model trained {result['epochs']} epochs on "
             f"{result['limit_train'] or 'all 60,000'} training images, tested on the 10,000 test "
             f"images; goal: ≤ 1 point top-1 loss.", "",
             f"Command: `{result.get('command', '')}`", "",
             "| model | top-1 | loss (points) | params | MACs | weight zeros | xz of weights | goal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        loss = "–" if "loss_points" not in r else f"{r['loss_points']:.2f}"
        xz = ("–" if not r.get("compressed_xz")
              else f"{r['compressed_xz']:,} B ({r['compressed_xz'] / r['dense_xz']:.2f}×)")
        goal = "–" if "meets_goal" not in r else ("✅" if r["meets_goal"] else "❌")
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f}% | {loss} | {r['params']:,} | "
                     f"{r['macs']:,} | {100 * r['sparsity']:.1f}% | {xz} | {goal} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("data", help="folder with the Fashion-MNIST idx files")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Run("prune_accuracy", args)
    result = {**run(args), "command": bench.command}
    bench.write(result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
