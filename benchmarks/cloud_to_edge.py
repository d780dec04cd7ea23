"""The cloud → edge pipeline, measured: ResNet-56 teacher → distilled student (ResNet-20, or
MLPerf Tiny's ResNet-8) → structured pruning with distillation recovery → INT8 (QAT) → ONNX (QDQ
and QOperator) and TFLite.

Data: the CIFAR-10 JPEG test set (10,000 images), split in two seeded halves (``--val-fraction``
changes the share held out): the student trains and calibrates on one part and every accuracy is
measured on the other. Random-crop and flip
augmentation on the training part. The student starts from the pretrained ResNet-20 (its option-A
shortcuts are first rewritten as equivalent fixed 1×1 convolutions so the dependency graph can
prune through them; outputs are unchanged, checked below). ``--student`` may instead be MLPerf
Tiny's Keras ResNet-8 (``../shared/data/mlperf-tiny-resnet8/pretrainedResnet.h5``, read with
``ec.from_keras``, BatchNorm kept): ~78k parameters, whose INT8 file lands within a few
hundred bytes of the 40× line, so a 3 % prune is enough (``--prune-steps 0`` skips pruning);
its conversion is checked against the float ``pretrainedResnet.tflite`` beside it when that
file is there. ``--assistant`` first distills the pretrained ResNet-20 from the teacher, and
that assistant teaches the student. The settings of the best run at the goal's size are in ``results/cloud_to_edge.md``.

    python benchmarks/cloud_to_edge.py \
        --teacher ../shared/data/resnet-cifar10-pretrained/resnet56-4bfd9763.th \
        --student ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th \
        --data ../shared/data/cifar10-jpeg-test/test.tar --out benchmarks/results

Writes cloud_to_edge.json, cloud_to_edge.md and cloud_to_edge.png. Goal: ≥ 40× smaller than the
teacher's FP32 ONNX file with ≤ 2 points of top-1 lost, in under 60 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgecompress as ec  # noqa: E402
from cifar_resnet import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    cifar_bundle,
    load_resnet,
    prunable,
    take_normalized_input,
)
from edgecompress.convert import to_nchw  # noqa: E402
from edgecompress.plot import plot_report  # noqa: E402

log = logging.getLogger("cloud_to_edge")


def fp32_onnx_sizes(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Bytes of ``model``'s FP32 ONNX file as exported, and with the short tensor names the
    student artifacts get by default (the goal's stricter reading)."""
    import onnx

    from edgecompress.export.onnx import export_float_onnx
    from edgecompress.onnx_utils import compact_names, load_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path, compact = Path(tmp) / "m.onnx", Path(tmp) / "compact.onnx"
        export_float_onnx(model, example, path)
        proto = load_onnx(path)
        compact_names(proto)
        onnx.save(proto, str(compact))
        return path.stat().st_size, compact.stat().st_size


def raw_nhwc(x: torch.Tensor) -> torch.Tensor:
    """The teacher's normalised NCHW input back to the 0..255 NHWC pixels Keras took."""
    mean = 255 * torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = 255 * torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x * std + mean).permute(0, 2, 3, 1).contiguous()


def keras_conversion_diff(model: nn.Module, h5: Path, x: torch.Tensor) -> float | None:
    """Max abs difference of ``model``'s softmax (on raw NHWC pixels) against the float TFLite
    file MLPerf Tiny published beside the Keras one (None when that file is not there)."""
    tflite = h5.with_suffix(".tflite")
    if not tflite.exists():
        return None
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(tflite))
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    outs = []
    for image in x.numpy():  # one at a time: the file's batch is 1
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        outs.append(interp.get_tensor(out["index"]))
    with torch.no_grad():
        ours = torch.softmax(model(x), 1).numpy()
    return float(np.abs(np.concatenate(outs) - ours).max())


def load_student(path: Path, x: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained student, ready to prune and taking the teacher's input, and what was
    checked on the way."""
    if path.suffix == ".h5":
        raw = raw_nhwc(x)
        # logits and trainable BatchNorm: distillation trains on them
        student = ec.from_keras(path, raw, logits=True, batchnorm="keep")
        diff = keras_conversion_diff(student, path, raw)
        if diff is not None and diff > 1e-4:
            raise SystemExit(f"ResNet-8 read from {path} differs from its TFLite file by {diff}")
        facts = {"family": "resnet8 (MLPerf Tiny, Keras, ec.from_keras)",
                 "max_abs_diff_vs_keras": student.edgecompress_source["conversion_max_abs_diff"],
                 "max_abs_diff_vs_keras_tflite": diff}
        return take_normalized_input(to_nchw(student)), facts
    student = load_resnet(path)
    with torch.no_grad():
        before = student(x)
        prunable(student)
        diff = float((student(x) - before).abs().max())
    assert diff < 1e-5, "shortcut rewrite changed outputs"
    return student, {"family": "resnet20", "max_abs_diff_after_shortcut_rewrite": diff}


# (report key, format, file, export options): QOperator is the same int8 kernels in a smaller file
EXPORTS = (("onnx", "onnx", "student_int8.onnx", {}),
           ("onnx-qoperator", "onnx", "student_int8_qop.onnx", {"quant_format": "qoperator"}),
           ("tflite", "tflite", "student_int8.tflite", {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, type=Path)
    ap.add_argument("--student", required=True, type=Path, help="pretrained ResNet-20 state dict, or MLPerf Tiny's "
                    "ResNet-8 Keras file (.h5)")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--distill-epochs", type=int, default=4)
    ap.add_argument("--distill-lr", type=float, default=1e-3)
    ap.add_argument("--assistant", type=Path, default=None,
                    help="teaching assistant: a pretrained ResNet-20 state dict distilled from the "
                         "teacher first (lr 1e-3), which then teaches the student")
    ap.add_argument("--assistant-epochs", type=int, default=4)
    ap.add_argument("--target-params", type=float, default=0.3,
                    help="fraction of the student's parameters kept by structured pruning")
    ap.add_argument("--recover-epochs", type=int, default=10, help="per pruning step")
    ap.add_argument("--prune-steps", type=int, default=1, help="0: no pruning")
    ap.add_argument("--round-to", type=int, default=None)
    ap.add_argument("--scope", default="global", choices=["global", "local"])
    ap.add_argument("--importance", default="l2")
    ap.add_argument("--ignore", default="", help="comma-separated layers pruning keeps whole "
                    "(e.g. layer1: the 16-channel stage holds 5%% of the parameters)")
    ap.add_argument("--recover-lr", type=float, default=2e-3)
    ap.add_argument("--recover-optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
    ap.add_argument("--recover-wd", type=float, default=1e-4, help="recovery weight decay")
    ap.add_argument("--recover-alpha", type=float, default=0.3,
                    help="recovery: weight of the hard labels (1 - alpha: the unpruned model's "
                         "soft targets)")
    ap.add_argument("--recover-hints", default="",
                    help="recovery feature distillation: comma-separated layers whose outputs "
                         "match the unpruned model's same layers, e.g. layer1,layer2,layer3")
    ap.add_argument("--hint-weight", type=float, default=1.0, help="weight of the hint loss")
    ap.add_argument("--select-on-val", action="store_true",
                    help="restore the distillation's and each recovery's best epoch on the "
                         "held-out half (which is also where accuracy is measured; off by "
                         "default: last epoch)")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--limit", type=int, default=None, help="use a subset of the images (quick runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.5,
                    help="share of the 10,000 images held out for accuracy (the rest train)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()

    data = cifar_bundle(args.data, batch_size=64, calib_size=512, seed=args.seed, limit=args.limit,
                        val_fraction=args.val_fraction)
    data.train = ec.data.RandomShiftFlip(data.train, pad=4, flip=True, seed=args.seed)
    teacher = load_resnet(args.teacher)
    check_images = data.samples("val", 64)
    student, student_checks = load_student(args.student, check_images)

    ignore = tuple(name for name in args.ignore.split(",") if name)
    hints = {name: name for name in args.recover_hints.split(",") if name} or None
    prune = [] if args.prune_steps == 0 else [
        # pruned and recovered with BatchNorm still in place; Fuse only after the training
        ec.passes.StructuredPrune(target_params=args.target_params, importance=args.importance,
                                  scope=args.scope, ignore=ignore,
                                  steps=args.prune_steps, round_to=args.round_to,
                                  finetune=ec.Distill.recover(epochs=args.recover_epochs,
                                                              lr=args.recover_lr,
                                                              alpha=args.recover_alpha,
                                                              hints=hints,
                                                              feature_weight=args.hint_weight,
                                                              optimizer=args.recover_optimizer,
                                                              weight_decay=args.recover_wd,
                                                              best_on_val=args.select_on_val))]
    assistant = []
    if args.assistant:
        # the ResNet-20 settings of the runs without an assistant; the distilled assistant is
        # then the model in hand, which teaches the student
        ta, student_checks["assistant"] = load_student(args.assistant, check_images)
        assistant = [ec.passes.Distill(teacher=teacher, student=ta, epochs=args.assistant_epochs, lr=1e-3,
                                       temperature=4.0, alpha=0.3, best_on_val=args.select_on_val)]
    pipe = ec.Pipeline([
        *assistant,
        ec.passes.Distill(teacher=None if assistant else teacher, student=student,
                          epochs=args.distill_epochs,
                          lr=args.distill_lr, temperature=4.0, alpha=0.3,
                          best_on_val=args.select_on_val),
        *prune,
        ec.passes.Fuse(),
        ec.passes.QuantizeQAT(epochs=args.qat_epochs, lr=args.qat_lr,
                              finetune=ec.Distill.recover(epochs=args.qat_epochs, lr=args.qat_lr,
                                                          alpha=0.3,
                                                          best_on_val=args.select_on_val)),
    ], measure=ec.Measure(threads=args.threads, latency_runs=50), seed=args.seed)
    dm = pipe.run(teacher, data)

    teacher_onnx, teacher_onnx_compact = fp32_onnx_sizes(teacher, data.example_input)
    exports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, fmt, name, options in EXPORTS:
            try:
                art = dm.export(fmt, Path(tmp) / name, threads=args.threads, benchmark_runs=100,
                                **options)
                exports[key] = {"size_bytes": art.size_bytes, "precision": art.precision,
                                "accuracy": art.accuracy, "p50_ms": art.latency.p50_ms,
                                "parity": art.parity.to_dict(),
                                "x_smaller_than_teacher_fp32_onnx": teacher_onnx / art.size_bytes}
            except ec.EdgeCompressError as exc:
                exports[key] = {"error": str(exc)}
    teacher_acc = dm.report.stages[0].accuracy
    # the goal is judged on the smallest artifact that was written
    smallest = min((k for k, e in exports.items() if "size_bytes" in e),
                   key=lambda k: exports[k]["size_bytes"], default=None)
    best = exports.get(smallest, {}) if smallest else {}
    result = {
        "command": " ".join(sys.argv), "seconds": time.time() - t0,
        "load_average_end": os.getloadavg()[0], "threads": args.threads,
        "student": student_checks, "val_images": len(data.val.dataset), "train_images": len(data.train.loader.dataset),
        "teacher_fp32_onnx_bytes": teacher_onnx, "teacher_accuracy": teacher_acc,
        "teacher_fp32_onnx_bytes_compact_names": teacher_onnx_compact,
        "exports": exports, "report": dm.report.to_dict(),
        "goal": {"artifact": smallest, "x_smaller": best.get("x_smaller_than_teacher_fp32_onnx"),
                 "points_lost": None if best.get("accuracy") is None
                 else 100 * (teacher_acc - best["accuracy"])},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cloud_to_edge{args.tag}.json").write_text(json.dumps(result, indent=2, default=str))
    plot_report(dm.report, args.out / f"cloud_to_edge{args.tag}.png", title="CIFAR-10 (JPEG): ResNet-56 → edge")
    (args.out / f"cloud_to_edge{args.tag}.md").write_text(markdown(result, dm))
    print(dm.report)
    print(json.dumps(result["goal"], indent=2))


def compact_note(r: dict[str, Any]) -> str:
    compact = r.get("teacher_fp32_onnx_bytes_compact_names")
    if not compact:
        return ""
    return (f" ({compact:,} bytes with the students' compact tensor names: by that stricter "
            f"measure 40× smaller means ≤ {compact // 40:,} bytes)")


def markdown(r: dict[str, Any], dm: ec.DeployableModel) -> str:
    lines = [f"Command: `{r['command']}`", "",
             f"Wall time {r['seconds'] / 60:.1f} min on {r['threads']} threads "
             f"(load average at the end {r['load_average_end']:.1f}). Accuracy on the "
             f"{r['val_images']:,} held-out JPEG images; the teacher's FP32 ONNX file is "
             f"{r['teacher_fp32_onnx_bytes']:,} bytes{compact_note(r)}.", "",
             dm.report.to_markdown(), "",
             "| artifact | precision | bytes | × smaller than teacher FP32 | top-1 | points lost | p50 ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for fmt, e in r["exports"].items():
        if "error" in e:
            lines.append(f"| {fmt} | failed: {e['error'][:120]} | | | | | |")
            continue
        lost = 100 * (r["teacher_accuracy"] - e["accuracy"])
        lines.append(f"| {fmt} | {e['precision']} | {e['size_bytes']:,} | "
                     f"{e['x_smaller_than_teacher_fp32_onnx']:.1f}× | {100 * e['accuracy']:.2f}% | "
                     f"{lost:.2f} | {e['p50_ms']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
