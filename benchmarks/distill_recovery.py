"""Accuracy recovery after 50 % structured pruning: distillation vs plain fine-tuning.

A ResNet-style CNN (``SmallResNet``, width 16) is trained on Fashion-MNIST, pruned 50 %
structured (channels physically removed), then recovered for the same number of epochs with
the same seed and the same batches either by ``ec.Distill.recover()`` (the unpruned model is
the teacher) or by plain ``ec.FineTune``. Prints the two side by side and writes JSON + Markdown.

    .venv/bin/python benchmarks/distill_recovery.py ../shared/data/fashion-mnist

Pruning is ``ec.passes.StructuredPrune(ratio, scope=...)`` (L2 ranking, channels rounded to
multiples of 8). ``--recover-samples`` recovers on the first N of the training images only (the
common case of a model trained on more data than is at hand for recovery), where the teacher's
soft targets carry what the labels of those few images cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import edgecompress as ec
from edgecompress.models import SmallResNet
from edgecompress.passes.distill import same_batches
from edgecompress.training import (
    Recovery,
    TrainConfig,
    cross_entropy_loss,
    train,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="Fashion-MNIST folder with the IDX files")
    ap.add_argument("--train-samples", type=int, default=6000)
    ap.add_argument("--val-samples", type=int, default=5000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--train-epochs", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--scope", default="global", choices=["global", "local"])
    ap.add_argument("--recover-samples", type=int, default=None,
                    help="recover on the first N training images only (default: all of them)")
    ap.add_argument("--epochs", type=int, default=2, help="recovery epochs (both ways)")
    ap.add_argument("--lr", type=float, default=1e-3, help="recovery learning rate (both ways)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--hints", default=None,
                    help='feature hints as JSON, e.g. \'{"layers.2": "layers.2"}\'')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-cache", default=None,
                    help="load the trained model's weights from this file if it exists, else "
                         "save them there (weights only); the JSON says whether it was reused")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args()


def recover_with(model: nn.Module, data: ec.DataBundle, recovery: Recovery | None,
                 args: argparse.Namespace) -> dict[str, Any]:
    step = ec.passes.StructuredPrune(ratio=args.ratio, scope=args.scope, finetune=recovery)
    how = f"ec.passes.StructuredPrune(ratio={args.ratio}, scope={args.scope!r})"
    seed = args.seed
    t0 = time.perf_counter()
    with same_batches(data.train):  # the other recovery sees exactly these batches
        dm = ec.Pipeline([step], measure=ec.Measure(latency=False), seed=seed).run(model, data)
    stage = dm.report.stages[-1]
    history = next((v for k, v in stage.notes.items() if k.endswith("_history")), None)
    return {"pruner": how, "params_before": dm.report.stages[0].params,
            "params_after": stage.params, "macs_before": dm.report.stages[0].macs,
            "macs_after": stage.macs, "accuracy_before": dm.report.stages[0].accuracy,
            "accuracy_after": stage.accuracy, "seconds": time.perf_counter() - t0,
            "history": history, "notes": {k: v for k, v in stage.notes.items()
                                          if not k.endswith("_history")}}


def trained_model(data: ec.DataBundle, args: argparse.Namespace) -> tuple[nn.Module, bool]:
    torch.manual_seed(0)
    model = SmallResNet(1, data.num_classes or 10, args.width)
    cache = Path(args.model_cache) if args.model_cache else None
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.eval(), True
    cfg = TrainConfig(epochs=args.train_epochs, lr=3e-3, seed=0)
    train(model, data.train, cross_entropy_loss, cfg, val_loader=data.val, desc="train")
    if cache is not None:
        torch.save(model.state_dict(), cache)
    return model.eval(), False


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()
    data = ec.data.idx(args.data, batch_size=128, seed=0, limit_train=args.train_samples,
                       limit_val=args.val_samples)
    model, reused = trained_model(data, args)
    if args.recover_samples:  # idx() draws both from one seeded permutation: a prefix
        data = ec.data.idx(args.data, batch_size=128, seed=0, limit_train=args.recover_samples,
                           limit_val=args.val_samples)
    common = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    pruned = recover_with(model, data, None, args)
    distill = recover_with(model, data, ec.Distill.recover(temperature=args.temperature,
                                                           alpha=args.alpha,
                                                           hints=json.loads(args.hints)
                                                           if args.hints else None, **common),
                           args)
    plain = recover_with(model, data, ec.FineTune(**common), args)
    gain = 100 * (distill["accuracy_after"] - plain["accuracy_after"])
    result = {"benchmark": "distill_recovery", "config": vars(args), "model_reused": reused,
              "pruned_only": pruned,
              "distill": distill,
              "finetune": plain, "gain_points": gain, "distill_wins": gain > 0,
              "wall_seconds": time.perf_counter() - start,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_recovery.json").write_text(json.dumps(result, indent=2))

    def pct(v: float) -> str:
        return f"{100 * v:.2f}%"

    md = (f"# Recovery after {int(100 * args.ratio)} % structured pruning (Fashion-MNIST)\n\n"
          f"SmallResNet(width {args.width}) trained {args.train_epochs} epochs on "
          f"{args.train_samples} samples; pruned with {distill['pruner']}: "
          f"{distill['params_before']:,} → {distill['params_after']:,} params, "
          f"{distill['macs_before'] / 1e6:.2f} M → {distill['macs_after'] / 1e6:.2f} M MACs. "
          f"Recovery: {args.epochs} epochs on {args.recover_samples or args.train_samples} "
          f"samples, lr {args.lr}, seed {args.seed}, same batches.\n\n"
          f"Command: `python benchmarks/distill_recovery.py {' '.join(sys.argv[1:])}`\n\n"
          f"| | plain fine-tune | distillation recovery (T={args.temperature}, "
          f"alpha={args.alpha}) |\n| --- | ---: | ---: |\n"
          f"| before pruning | {pct(plain['accuracy_before'])} | {pct(distill['accuracy_before'])} |\n"
          f"| after pruning, no recovery | {pct(pruned['accuracy_after'])} | "
          f"{pct(pruned['accuracy_after'])} |\n"
          f"| after {args.epochs} epochs of recovery | {pct(plain['accuracy_after'])} | "
          f"{pct(distill['accuracy_after'])} |\n"
          f"| recovery time | {plain['seconds']:.0f} s | {distill['seconds']:.0f} s |\n\n"
          f"Distillation − fine-tune: {gain:+.2f} points. Validation: {args.val_samples} "
          f"test-set samples. Wall time {result['wall_seconds'] / 60:.1f} min, load average "
          f"{load_before[0]:.1f} → {os.getloadavg()[0]:.1f}.\n")
    (out / "distill_recovery.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
