"""Train the benchmark detector (YOLOv8n from its yaml, random init) on generated shapes.

    nice -n 10 python benchmarks/train_detector.py --out /tmp/yolo_shapes.safetensors --minutes 30

Every step draws fresh images from ``ec.data.synthetic_detection`` (seeds 10,000 + step), at a
small training size with objects of the same pixel sizes as the 320×320 held-out split (seed 1),
so the data never repeats and training is ~4× cheaper than at 320. The learning rate follows a
cosine over the time budget; an EMA of the weights (as YOLO trainers keep) is what is evaluated
and saved, whenever its held-out mAP@0.5 improves. Weights: safetensors; architecture: JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _detector as D  # noqa: E402
from _harness import Run  # noqa: E402

from edgecompress.data import synthetic_detection  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--results", type=Path, default=None,
                    help="also write detect_train.{json,md} here (e.g. benchmarks/results)")
    ap.add_argument("--out", type=Path, required=True, help="safetensors file for the weights")
    ap.add_argument("--minutes", type=float, default=30.0, help="time budget")
    ap.add_argument("--train-size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=float, default=0.25, help="YOLOv8 width multiple (n: 0.25)")
    ap.add_argument("--depth", type=float, default=0.33)
    ap.add_argument("--eval-every", type=float, default=4.0, help="minutes between evaluations")
    ap.add_argument("--val", type=int, default=200, help="held-out images")
    ap.add_argument("--seed", type=int, default=0)
    # one thread: on the shared, overloaded machine a 2-thread op waits for its slower thread
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def _train_batch(step: int, size: int, batch: int):
    """A fresh batch: same object pixel sizes as the 320 evaluation set."""
    k = D.EVAL_SIZE / size
    lo, hi = D.EVAL_SCALE
    objects = max(1, round(D.EVAL_OBJECTS / k ** 2))
    data = synthetic_detection(batch, size=size, seed=10_000 + step, classes=D.SHAPES,
                               scale=(lo * k, min(hi * k, 0.9)), max_objects=max(objects, 2))
    x = torch.stack([torch.from_numpy(data.image(i).transpose(2, 0, 1).copy()).float() / 255
                     for i in range(len(data))])
    return x, data.targets


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """EMA of weights and BN statistics; the decay ramps up so the random init fades fast."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("train_detector")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = D.build_yolo(len(D.SHAPES), args.width, args.depth)
    ema = copy.deepcopy(model).eval()
    loss_fn = D.YoloLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    val = D.eval_set(args.val)
    arch = {"num_classes": len(D.SHAPES), "class_names": list(D.SHAPES), "width": args.width,
            "depth": args.depth, "input_size": D.EVAL_SIZE, "arch": "yolov8 (ultralytics yaml)"}
    budget, start, step, best, history = args.minutes * 60, time.time(), 0, -1.0, []
    next_eval = args.eval_every * 60
    while True:
        elapsed = time.time() - start
        frac = min(1.0, elapsed / budget)
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        model.train()
        x, targets = _train_batch(step, args.train_size, args.batch)
        loss = loss_fn(model, x, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        _ema_update(ema, model, 0.999 * (1 - math.exp(-step / 300)))
        step += 1
        if step % 20 == 0:
            log.info("step %d  %.0fs  loss %.2f  lr %.2e  load %s", step, elapsed,
                     float(loss) / args.batch, opt.param_groups[0]["lr"], os.getloadavg()[0])
        if elapsed >= next_eval or frac >= 1.0:
            next_eval += args.eval_every * 60
            m = D.evaluate(ema, val)
            history.append({"step": step, "seconds": round(elapsed), **m})
            log.info("eval step %d: %s", step, m)
            if m["map50"] > best:
                best = m["map50"]
                D.save(ema, args.out, {**arch, "step": step, "val": m, "history": history})
            if frac >= 1.0:
                break
    summary = {"best_map50": best, "steps": step, "history": history, "arch": arch,
               "train_size": args.train_size, "batch": args.batch, "minutes": args.minutes}
    print(json.dumps(summary))
    if args.results:
        run = Run("detect_train", argparse.Namespace(out=args.results, tag=""))
        run.write(summary, ["# Training the benchmark detector", "", f"`{run.command}`", "",
                            f"{run.describe_load()}", "", "| step | seconds | mAP@0.5 | mAP@0.5:0.95 |",
                            "| ---: | ---: | ---: | ---: |"]
                  + [f"| {h['step']} | {h['seconds']} | {h['map50']} | {h['map50_95']} |"
                     for h in history])


if __name__ == "__main__":
    main()
