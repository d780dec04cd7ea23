"""Keras in, INT8 out: MLPerf Tiny's Keras ResNet-8 through ``ec.from_keras`` → QuantizePTQ →
TFLite INT8 and ONNX INT8, side by side with MLPerf's own ``pretrainedResnet_quant.tflite`` on
the same images; then Distill from the pretrained ResNet-56 before INT8.

Data: the CIFAR-10 JPEG test set split in two seeded halves: calibration and distillation use
one, every top-1 is measured on the other (5,000 images). Every model takes what the Keras model
takes: NHWC float pixels 0..255; MLPerf's int8 file takes the same pixels quantized with its
own input scale and zero point (applied here, as its benchmark harness does).

    nice -n 10 python benchmarks/keras_in.py \\
        --keras ../shared/data/mlperf-tiny-resnet8/pretrainedResnet.h5 \\
        --data ../shared/data/cifar10-jpeg-test/test.tar \\
        --teacher ../shared/data/resnet-cifar10-pretrained/resnet56-4bfd9763.th --out benchmarks/results

Writes keras_in.json and keras_in.md. Goal: ours ≥ theirs − 0.3 point, file ≤ theirs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgecompress as ec  # noqa: E402
from cifar_resnet import CIFAR_MEAN, CIFAR_STD, load_resnet  # noqa: E402

log = logging.getLogger("keras_in")


class RawNHWCTeacher(nn.Module):
    """The ResNet-56 (normalised NCHW input) fed the Keras student's input (NHWC 0..255)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", 255 * torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(CIFAR_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.permute(0, 3, 1, 2) - self.mean) / self.std)


class NHWCShiftFlip(ec.data.RandomShiftFlip):
    """ec.data.RandomShiftFlip (random 4-pixel shift + horizontal flip) for NHWC batches: the
    Keras student's layout. Keeps ``.loader`` and ``.generator``, so Distill replays it."""

    def __iter__(self):
        for batch in self.loader:
            x, y = batch[0], batch[1]
            yield self.augment(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous(), y


def tflite_top1(path: Path, data: ec.DataBundle) -> tuple[float, float | None]:
    """Top-1 of a .tflite file on data.val, one image at a time; int8 inputs are quantized with
    the file's own (scale, zero point). Also its max |diff| vs nothing (None) for symmetry."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(path))
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    scale, zero = inp["quantization"]
    correct = total = 0
    for x, y in data.val:
        for image, label in zip(x.numpy(), y.numpy()):
            if inp["dtype"] == np.int8:
                image = np.clip(np.round(image / scale) + zero, -128, 127).astype(np.int8)
            interp.set_tensor(inp["index"], image[None])
            interp.invoke()
            correct += int(interp.get_tensor(out["index"]).argmax() == label)
            total += 1
    return correct / total, None


def tflite_diff(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max |diff| of ``model``'s outputs against a float .tflite file on ``x`` (batch 1 each)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(path))
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    theirs = []
    for image in x.numpy():
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        theirs.append(interp.get_tensor(out["index"]))
    with torch.no_grad():
        ours = model(x).numpy()
    return float(np.abs(np.concatenate(theirs) - ours).max())


def export_all(dm: ec.DeployableModel, out: Path, tag: str,
               keys: tuple[str, ...] = ("tflite", "onnx", "onnx-qoperator")) -> dict[str, Any]:
    rows = {}
    for key, fmt, name, opts in (("tflite", "tflite", f"{tag}.tflite", {}),
                                 ("onnx", "onnx", f"{tag}.onnx", {}),
                                 ("onnx-qoperator", "onnx", f"{tag}_qop.onnx",
                                  {"quant_format": "qoperator"})):
        if key not in keys:
            continue
        art = dm.export(fmt, out / name, benchmark_runs=20, overwrite=True, **opts)  # --work is scratch
        log.info("%s %s: %s", tag, key, art)
        m = art.metrics()
        rows[key] = {"bytes": m.size_bytes, "top1": m.accuracy, "precision": m.precision,
                     "max_abs_diff_vs_sim": m.max_abs_diff,
                     "top1_agreement_vs_sim": m.top1_agreement, "parity_ok": m.parity_ok}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--teacher", type=Path, default=None, help="ResNet-56 state dict (skip: no distillation)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/keras_in"))
    ap.add_argument("--limit", type=int, default=None, help="use a seeded subset of the images")
    ap.add_argument("--distill-epochs", type=int, default=1)
    ap.add_argument("--distill-batches", type=int, default=None, help="cap on batches per epoch")
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--augment", action="store_true", help="random shift + flip of the distillation images")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    data = ec.data.image_folder(args.data, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3,
                                layout="NHWC", limit=args.limit, calib_size=512, seed=0)
    samples = data.samples("val", 64)
    model = ec.from_keras(args.keras, samples, logits=args.teacher is not None,
                          batchnorm="keep" if args.teacher is not None else "fold")
    source = dict(model.edgecompress_source)
    float_tflite = args.keras.with_suffix(".tflite")
    probs = nn.Sequential(model, nn.Softmax(-1)) if source["conversion_notes"].get(
        "dropped_final_softmax_axis") is not None else model
    result: dict[str, Any] = {
        "command": " ".join(sys.argv), "images_val": len(data.val.dataset),
        "conversion": source,
        "max_abs_diff_vs_mlperf_float_tflite": tflite_diff(float_tflite, probs, samples)
        if float_tflite.exists() else None}
    quant = args.keras.with_name(args.keras.stem + "_quant.tflite")
    top1, _ = tflite_top1(quant, data)
    result["theirs"] = {"file": quant.name, "bytes": quant.stat().st_size, "top1": top1}
    # accuracy of the torch stages is off (slow on a shared machine): the artifacts' is measured
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=512)], measure=False).run(model, data)
    result["ptq"] = export_all(dm, args.work, "ptq")
    save(result, args, t0, load0)
    if args.teacher is not None:
        result["distill"] = distill(model, data, args)
        save(result, args, t0, load0)
    print(markdown(result))


def save(result: dict[str, Any], args: argparse.Namespace, t0: float, load0: float) -> None:
    """Write what is measured so far (each phase adds to it)."""
    result.update(seconds=time.perf_counter() - t0, load_average_start=load0,
                  load_average_end=os.getloadavg()[0], torch=torch.__version__,
                  goal=goal(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"keras_in{args.tag}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"keras_in{args.tag}.md").write_text(markdown(result))


def distill(model: nn.Module, data: ec.DataBundle, args: argparse.Namespace) -> dict[str, Any]:
    teacher = RawNHWCTeacher(load_resnet(args.teacher)).eval()
    if args.augment:
        data = dataclasses.replace(data, train=NHWCShiftFlip(data.train, pad=4, flip=True, seed=0))
    passes = [ec.Distill(teacher=teacher, epochs=args.distill_epochs, lr=args.distill_lr,
                         max_batches=args.distill_batches, best_on_val=False, measure=False),
              ec.passes.QuantizePTQ(samples=512)]
    dm = ec.Pipeline(passes, measure=False).run(model, data)
    settings = {"epochs": args.distill_epochs, "max_batches_per_epoch": args.distill_batches,
                "batch_size": 64, "lr": args.distill_lr, "temperature": 4.0, "alpha": 0.7,
                "train_images": len(data.train.loader.dataset if args.augment else data.train.dataset),
                "augmentation": "random 4-pixel shift + horizontal flip" if args.augment else None,
                "best_on_val": False, "student_batchnorm": "keep (statistics from 64 val images)"}
    return {"settings": settings, **export_all(dm, args.work, "distilled", ("tflite", "onnx"))}


def goal(r: dict[str, Any]) -> dict[str, Any]:
    theirs, ours = r["theirs"], r["ptq"]["tflite"]
    gain = None  # stays None until the distillation phase has finished (results are saved per phase)
    if "distill" in r:
        gain = 100 * (r["distill"]["tflite"]["top1"] - ours["top1"])
    return {"distill_gain_tflite_int8_points": gain,
            "top1_ours_minus_theirs_points": 100 * (ours["top1"] - theirs["top1"]),
            "accuracy_ok": ours["top1"] >= theirs["top1"] - 0.003,
            "bytes_ours": ours["bytes"], "bytes_theirs": theirs["bytes"],
            "size_ok": ours["bytes"] <= theirs["bytes"],
            "conversion_parity_ok": r["conversion"]["conversion_max_abs_diff"] <= 1e-4}


def markdown(r: dict[str, Any]) -> str:
    c = r["conversion"]
    lines = ["# Keras in: MLPerf Tiny ResNet-8 → INT8, ours vs MLPerf's", "",
             f"Command: `{r['command']}`", "",
             f"Conversion ({c['converter']}): max |diff| vs Keras {c['conversion_max_abs_diff']:.2e} on "
             f"{c['conversion_samples']} val images; vs MLPerf's float TFLite "
             f"{r['max_abs_diff_vs_mlperf_float_tflite']:.2e}. Top-1 on {r['images_val']} "
             f"val images.", "",
             "| model | file | bytes | top-1 |", "| --- | --- | ---: | ---: |",
             f"| MLPerf's int8 | {r['theirs']['file']} | {r['theirs']['bytes']:,} | "
             f"{100 * r['theirs']['top1']:.2f} % |"]
    for stage in ("ptq", "distill"):
        for key in ("tflite", "onnx", "onnx-qoperator"):
            row = r.get(stage, {}).get(key)
            if row:
                lines.append(f"| ours, {stage} | {key} | {row['bytes']:,} | "
                             f"{100 * row['top1']:.2f} % |")
    if "distill" in r:
        lines += ["", f"Distillation settings: {r['distill']['settings']}."]
    elif "--teacher" in r["command"]:
        lines += ["", "Distillation: not finished yet (results are written after each phase; "
                      "distill_gain_tflite_int8_points stays None until it is)."]
    lines += ["", f"Goal: {r['goal']}", "",
              f"{r['seconds']:.0f} s; load average {r['load_average_start']:.1f} → "
              f"{r['load_average_end']:.1f} (2 cores)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
