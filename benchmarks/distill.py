"""Knowledge distillation on Fashion-MNIST: distilled vs plainly trained student, 3 seeds.

A ResNet-style teacher (``SmallResNet``, width 12) is trained once on the whole training set;
then for each seed a ``SmallCNN`` student (width 6, 8.3× fewer parameters) is trained twice by
``ec.passes.Distill`` with ``baseline=True`` on 2,000 of those images: once from the teacher,
once on the labels only — same initial weights, same epochs, same seed, same batches. Prints a
table and writes JSON + Markdown.

    .venv/bin/python benchmarks/distill.py ../shared/data/fashion-mnist

Defaults finish in about 10 minutes on 2 quiet CPU cores (well under the 40-minute budget);
``--train-samples`` / ``--val-samples`` shrink the data for quick runs; one thread (two
threads on a loaded 2-core machine spin against each other and run far slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.models import SmallCNN, SmallResNet
from edgecompress.training import TrainConfig, accuracy, cross_entropy_loss, train


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="Fashion-MNIST folder with the IDX files (e.g. ../shared/data/fashion-mnist)")
    ap.add_argument("--train-samples", type=int, default=60000, help="teacher training subset")
    ap.add_argument("--student-samples", type=int, default=2000,
                    help="student training subset (a subset of the teacher's)")
    ap.add_argument("--val-samples", type=int, default=4000)
    ap.add_argument("--teacher-width", type=int, default=12)
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--student-width", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=30, help="student epochs (both runs)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--teacher-cache", default=None,
                    help="load the teacher's weights from this file if it exists, else save "
                         "them there (weights only); the JSON says whether it was reused")
    ap.add_argument("--batch-size", type=int, default=32, help="student batch size")
    ap.add_argument("--teacher-batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--augment", type=int, default=0, metavar="PAD",
                    help="random PAD-pixel shifts + horizontal flips on the students' batches "
                         "(both arms alike; 0: off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args()


def train_teacher(data: ec.DataBundle, args: argparse.Namespace) -> tuple[torch.nn.Module, bool]:
    torch.manual_seed(0)
    teacher = SmallResNet(1, data.num_classes or 10, args.teacher_width)
    cache = Path(args.teacher_cache) if args.teacher_cache else None
    if cache is not None and cache.exists():
        teacher.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return teacher.eval(), True
    cfg = TrainConfig(epochs=args.teacher_epochs, lr=args.lr, seed=0)
    train(teacher, data.train, cross_entropy_loss, cfg, val_loader=data.val, desc="teacher")
    if cache is not None:
        torch.save(teacher.state_dict(), cache)
    return teacher.eval(), False


def run_seed(teacher: torch.nn.Module, data: ec.DataBundle, seed: int,
             args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    student = SmallCNN(1, data.num_classes or 10, args.student_width)
    step = ec.passes.Distill(student=student, epochs=args.epochs, lr=args.lr,
                             temperature=args.temperature, alpha=args.alpha, seed=seed,
                             baseline=True)
    t0 = time.perf_counter()
    dm = ec.Pipeline([step], measure=False, seed=seed).run(teacher, data)
    notes = dm.report.stages[-1].notes
    return {"seed": seed, "distilled": notes["student"]["accuracy"],
            "plain": notes["baseline_accuracy"], "teacher": notes["teacher"],
            "student": notes["student"], "seconds": time.perf_counter() - t0,
            "distill_history": notes["distill_history"],
            "baseline_history": notes["baseline_history"]}


def table(rows: list[dict], summary: dict) -> str:
    lines = ["| seed | plain student | distilled student | gain (points) |",
             "| ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {100 * r['plain']:.2f}% | {100 * r['distilled']:.2f}% | "
                     f"{100 * (r['distilled'] - r['plain']):+.2f} |")
    lines.append(f"| mean | {100 * summary['plain_mean']:.2f}% | "
                 f"{100 * summary['distilled_mean']:.2f}% | {summary['gain_points']:+.2f} |")
    return "\n".join(lines)


def models_table(t: dict, s: dict) -> str:
    def row(name: str, m: dict) -> str:
        return (f"| {name} | {m['params']:,} | {m['size_bytes'] / 1e3:.1f} kB | "
                f"{m['macs'] / 1e6:.2f} M | {100 * m['accuracy']:.2f}% | {m['latency_ms']:.3f} |")
    return "\n".join(["| model | params | size | MACs | top-1 | p50 ms (batch 1, 1 thread) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |", row("teacher", t),
                      row("distilled student (seed 0)", s)])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = os.getloadavg()
    # idx() draws both subsets from one seeded permutation: the students' samples are the first
    # student_samples of the teacher's. Same validation samples for all.
    teacher_data = ec.data.idx(args.data, batch_size=args.teacher_batch_size, seed=0,
                               limit_train=args.train_samples, limit_val=args.val_samples)
    data = ec.data.idx(args.data, batch_size=args.batch_size, seed=0,
                       limit_train=args.student_samples, limit_val=args.val_samples)
    if args.augment:
        data.train = ec.data.RandomShiftFlip(data.train, pad=args.augment, flip=True, seed=0)
    teacher, reused = train_teacher(teacher_data, args)
    teacher_seconds = time.perf_counter() - start
    teacher_acc = accuracy(teacher, data.val)
    print(f"teacher trained: {100 * teacher_acc:.2f}% "
          f"({time.perf_counter() - start:.0f} s so far)", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(teacher, data, seed, args))
        r = rows[-1]
        print(f"seed {seed}: plain {100 * r['plain']:.2f}%  distilled {100 * r['distilled']:.2f}%"
              f"  ({r['seconds']:.0f} s)", flush=True)
    plain = [r["plain"] for r in rows]
    dist = [r["distilled"] for r in rows]
    t, s = rows[0]["teacher"], rows[0]["student"]
    summary = {"plain_mean": statistics.mean(plain), "distilled_mean": statistics.mean(dist),
               "gain_points": 100 * (statistics.mean(dist) - statistics.mean(plain)),
               "wins": sum(d > p for d, p in zip(dist, plain)),
               "param_ratio": t["params"] / s["params"],
               "wall_seconds": time.perf_counter() - start}
    summary["meets_goal"] = summary["gain_points"] >= 1.0
    result = {"benchmark": "distill", "config": vars(args), "summary": summary,
              "teacher_accuracy": teacher_acc, "teacher_reused_from_cache": reused,
              "teacher_seconds": teacher_seconds, "rows": rows,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": args.threads,
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(result, indent=2))
    md = (f"# Distillation on Fashion-MNIST\n\n"
          f"Teacher SmallResNet(width {args.teacher_width}) trained {args.teacher_epochs} epochs; "
          f"student SmallCNN(width {args.student_width}), {summary['param_ratio']:.1f}× fewer "
          f"parameters, {args.epochs} epochs each way (AdamW, cosine, lr {args.lr}), "
          f"T={args.temperature}, alpha={args.alpha}. The teacher learns from a seeded subset "
          f"of {args.train_samples} training images, the students from {args.student_samples} "
          f"of those (the limited-labels case where distillation pays most); validation on "
          f"{args.val_samples} test-set images. Same initial weights, seed and batches for the "
          f"plain and the distilled run of a seed; both keep their best validation epoch.\n\n"
          f"Command: `python benchmarks/distill.py {' '.join(sys.argv[1:])}`\n\n"
          f"{table(rows, summary)}\n\n{models_table(t, s)}\n\n"
          f"Teacher {'loaded from cache' if reused else f'trained in {teacher_seconds:.0f} s'}. "
          f"Wall time {summary['wall_seconds'] / 60:.1f} min on {os.cpu_count()} CPUs "
          f"({args.threads} torch thread), load average before/after "
          f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f}. "
          f"Goal (distilled ≥ 1 point above plain on average): "
          f"{'met' if summary['meets_goal'] else 'NOT met'}.\n")
    (out / "distill.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
