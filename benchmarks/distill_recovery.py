"""Accuracy recovery after 50 % structured pruning: distillation vs plain fine-tuning.

A ResNet-style CNN is pruned 50 % structured (channels physically removed), then recovered for
the same number of epochs, with the same seed and the same batches, either by
``ec.Distill.recover()`` (the unpruned model is the teacher) or by plain ``ec.FineTune``. Prints
the two side by side and writes JSON + Markdown (``distill_recovery{--tag}.*``).

Two sources of the model:

* a pretrained CIFAR-10 ResNet-20/56 (``--pretrained``) with the CIFAR-10 JPEG test tar as data,
  split in two seeded halves (recovery on one, accuracy on the other; crop + flip augmentation)::

    python benchmarks/distill_recovery.py ../shared/data/cifar10-jpeg-test/test.tar \\
        --pretrained ../shared/data/resnet-cifar10-pretrained/resnet56-4bfd9763.th \\
        --scope local --lrs 1e-3,3e-3,1e-2 --seeds 0,1,2 --tag _resnet56

* a ``SmallResNet`` trained here on Fashion-MNIST (an IDX folder as data)::

    python benchmarks/distill_recovery.py ../shared/data/fashion-mnist --model-cache w16.pt

Pruning is ``ec.passes.StructuredPrune(ratio, scope=...)`` (L2 ranking, channels rounded to
multiples of 8). ``--recover-samples`` recovers on the first N training images only. Each seed
changes the data split (CIFAR) or subset (Fashion-MNIST), the batches and the augmentation.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgecompress as ec  # noqa: E402
from cifar_resnet import cifar_bundle, load_resnet, prunable  # noqa: E402
from edgecompress.models import SmallResNet  # noqa: E402
from edgecompress.data.bundle import same_batches  # noqa: E402
from edgecompress.training import Recovery, TrainConfig, cross_entropy_loss, train  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="Fashion-MNIST IDX folder, or the CIFAR-10 JPEG tar with --pretrained")
    ap.add_argument("--pretrained", default=None,
                    help="CIFAR-10 ResNet-20/56 state dict: prune it instead of training a model")
    ap.add_argument("--train-samples", type=int, default=6000, help="Fashion-MNIST only")
    ap.add_argument("--val-samples", type=int, default=5000, help="Fashion-MNIST only")
    ap.add_argument("--width", type=int, default=16, help="Fashion-MNIST SmallResNet width")
    ap.add_argument("--train-epochs", type=int, default=5, help="Fashion-MNIST only")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--scope", default="global", choices=["global", "local"])
    ap.add_argument("--recover-samples", type=int, default=None,
                    help="recover on the first N training images only (Fashion-MNIST)")
    ap.add_argument("--epochs", type=int, default=2, help="recovery epochs (both ways)")
    ap.add_argument("--lrs", default="1e-3", help="recovery learning rates, comma-separated "
                                                 "(both ways, one comparison each)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--hints", default=None,
                    help='feature hints as JSON, e.g. \'{"layers.2": "layers.2"}\'')
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-cache", default=None,
                    help="Fashion-MNIST: load the trained model's weights from this file if it "
                         "exists, else save them there (weights only)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args()


def recovery_data(args: argparse.Namespace, seed: int) -> ec.DataBundle:
    if args.pretrained:
        data = cifar_bundle(args.data, batch_size=64, seed=seed)
        data.train = ec.data.RandomShiftFlip(data.train, pad=4, flip=True, seed=seed)
        return data
    return ec.data.idx(args.data, batch_size=128, seed=seed,
                       limit_train=args.recover_samples or args.train_samples,
                       limit_val=args.val_samples)


def starting_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    if args.pretrained:
        return prunable(load_resnet(args.pretrained)), f"pretrained {Path(args.pretrained).name}"
    torch.manual_seed(0)
    model = SmallResNet(1, 10, args.width)
    cache = Path(args.model_cache) if args.model_cache else None
    how = (f"SmallResNet(width {args.width}) trained {args.train_epochs} epochs on "
           f"{args.train_samples} Fashion-MNIST images")
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.eval(), how + f" (weights reused from {cache.name})"
    data = ec.data.idx(args.data, batch_size=128, seed=0, limit_train=args.train_samples,
                       limit_val=args.val_samples)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=args.train_epochs, lr=3e-3,
                                                              seed=0),
          val_loader=data.val, desc="train")
    if cache is not None:
        torch.save(model.state_dict(), cache)
    return model.eval(), how


def recover_with(model: nn.Module, data: ec.DataBundle, recovery: Recovery | None,
                 args: argparse.Namespace, seed: int) -> dict[str, Any]:
    step = ec.passes.StructuredPrune(ratio=args.ratio, scope=args.scope, finetune=recovery)
    t0 = time.perf_counter()
    with same_batches(data.train):  # the other recovery sees exactly these batches
        dm = ec.Pipeline([step], measure=ec.Measure(latency=False), seed=seed).run(model, data)
    first, stage = dm.report.stages[0], dm.report.stages[-1]
    history = next((v for k, v in stage.notes.items() if k.endswith("_history")), None)
    return {"params_before": first.params, "params_after": stage.params,
            "macs_before": first.macs, "macs_after": stage.macs,
            "accuracy_before": first.accuracy, "accuracy_after": stage.accuracy,
            "seconds": time.perf_counter() - t0, "history": history}


def compare(model: nn.Module, args: argparse.Namespace, seed: int, lr: float,
            pruned: dict[str, Any], data: ec.DataBundle) -> dict[str, Any]:
    common = {"epochs": args.epochs, "lr": lr, "seed": seed}
    hints = json.loads(args.hints) if args.hints else None
    distill = recover_with(model, data, ec.Distill.recover(temperature=args.temperature,
                                                           alpha=args.alpha, hints=hints,
                                                           **common), args, seed)
    plain = recover_with(model, data, ec.FineTune(**common), args, seed)
    gain = 100 * (distill["accuracy_after"] - plain["accuracy_after"])
    print(f"seed {seed} lr {lr:g}: no recovery {pruned['accuracy_after']:.2%}, fine-tune "
          f"{plain['accuracy_after']:.2%}, distill {distill['accuracy_after']:.2%} ({gain:+.2f})",
          flush=True)
    return {"seed": seed, "lr": lr, "pruned_only": pruned, "finetune": plain,
            "distill": distill, "gain_points": gain}


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    runs = result["runs"]
    first = runs[0]["distill"]
    gains = [r["gain_points"] for r in runs]
    rows = "".join(
        f"| {r['seed']} | {r['lr']:g} | {r['pruned_only']['accuracy_before']:.2%} | "
        f"{r['pruned_only']['accuracy_after']:.2%} | {r['finetune']['accuracy_after']:.2%} | "
        f"{r['distill']['accuracy_after']:.2%} | {r['gain_points']:+.2f} | "
        f"{r['finetune']['seconds']:.0f} / {r['distill']['seconds']:.0f} s |\n" for r in runs)
    return (
        f"# Recovery after {round(100 * args.ratio)} % structured pruning: {result['model']}, "
        f"T={args.temperature}, alpha={args.alpha}\n\n"
        f"Pruned with `ec.passes.StructuredPrune(ratio={args.ratio}, "
        f"scope={args.scope!r})`: {first['params_before']:,} → {first['params_after']:,} params, "
        f"{first['macs_before'] / 1e6:.1f} M → {first['macs_after'] / 1e6:.1f} M MACs. Recovery: "
        f"{args.epochs} epochs each way, same seed and same batches; distillation with T="
        f"{args.temperature}, alpha={args.alpha}, the unpruned model as teacher. "
        f"Data: {result['data']}.\n\n"
        f"Command: `{result['command']}`\n\n"
        "| seed | lr | before pruning | no recovery | fine-tune | distillation | "
        "distill − fine-tune (points) | time (FT / KD) |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + rows +
        f"\nDistillation wins {sum(g > 0 for g in gains)} of {len(gains)} comparisons; mean "
        f"{sum(gains) / len(gains):+.2f} points. Wall time {result['wall_seconds'] / 60:.1f} min, "
        f"load average {result['loadavg_before'][0]:.1f} → {result['loadavg_after'][0]:.1f}, "
        f"{args.threads} thread(s).\n")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()
    model, how = starting_model(args)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        data = recovery_data(args, seed)
        pruned = recover_with(model, data, None, args, seed)
        runs += [compare(model, args, seed, float(lr), pruned, data) for lr in args.lrs.split(",")]
    data_how = ("CIFAR-10 JPEG test set, seeded halves: 5,000 images to recover on (crop + flip), "
                "5,000 to measure" if args.pretrained else
                f"Fashion-MNIST, {args.recover_samples or args.train_samples} training images to "
                f"recover on, {args.val_samples} test images to measure")
    result = {"benchmark": "distill_recovery", "config": vars(args), "model": how,
              "data": data_how, "command": "python benchmarks/distill_recovery.py "
                                           + " ".join(sys.argv[1:]),
              "runs": runs, "distill_wins": sum(r["gain_points"] > 0 for r in runs),
              "wall_seconds": time.perf_counter() - start,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"distill_recovery{args.tag}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result, args)
    (out / f"distill_recovery{args.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
