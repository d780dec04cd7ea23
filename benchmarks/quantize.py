"""INT8 quantization on real data: edgecompress PTQ/QAT → ONNX vs FP32 and vs ORT's quantize_static.

Part 1 (``--weights``/``--data``): the pretrained CIFAR-10 ResNet-20 on the CIFAR-10 JPEG test
set, split in halves (calibrate / train QAT on one, evaluate on the other). Rows: FP32 ONNX,
our PTQ ONNX (per calibration method), our QAT ONNX, and ONNX Runtime's ``quantize_static`` run
directly on the same float ONNX with the same calibration samples (its recommended settings for
this CPU, and its plain defaults). Latencies are measured interleaved in one process.

Part 2 (``--fashion``): MobileNetV3-small trained briefly on a Fashion-MNIST subset (depthwise
convs, hard-swish, squeeze-excitation): FP32 vs PTQ vs QAT, per-tensor and per-channel.

    .venv/bin/python benchmarks/quantize.py \
        --weights ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th \
        --data ../shared/data/cifar10-jpeg-test/test.tar --fashion ../shared/data/fashion-mnist

Writes benchmarks/results/quantize.json and quantize.md.
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

sys.path.insert(0, str(Path(__file__).parent))

import edgecompress as ec  # noqa: E402
from edgecompress.pipeline import Measure  # noqa: E402
from edgecompress.training import TrainConfig, accuracy, cross_entropy_loss, train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NO_LATENCY = Measure(latency=False, macs=False)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="resnet20-*.th from resnet-cifar10-pretrained")
    ap.add_argument("--data", help="cifar10-jpeg-test/test.tar")
    ap.add_argument("--fashion", help="fashion-mnist folder (part 2)")
    ap.add_argument("--limit", type=int, default=None, help="images of CIFAR to use (all: 10000)")
    ap.add_argument("--calib", type=int, default=512, help="calibration samples")
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy"])
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-batches", type=int, default=None, help="cap on QAT batches per epoch")
    ap.add_argument("--fashion-train", type=int, default=8000, help="Fashion-MNIST train subset")
    ap.add_argument("--fashion-val", type=int, default=2000, help="Fashion-MNIST test subset")
    ap.add_argument("--fashion-size", type=int, default=32, help="image side for MobileNetV3")
    ap.add_argument("--fashion-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def onnx_accuracy(path: Path, data: ec.DataBundle) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in data.val:
        out = sess.run(None, {name: x.numpy()})[0]
        correct += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def interleaved_latency(paths: dict[str, Path], example: np.ndarray, threads: int,
                        runs: int, block: int = 10) -> dict[str, float]:
    """p50 ms per model, batch 1, the models timed in alternating blocks so load drifts hit all alike.

    Blocks, not single runs: each ONNX Runtime session keeps its own spinning worker threads,
    and switching sessions on every run makes the two pools fight over the cores (measured:
    both latencies doubled on 2 cores). Two untimed runs start each block for the same reason.
    """
    import onnxruntime as ort

    sessions = {}
    for key, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sessions[key] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(max(1, runs // block)):
        for key, s in sessions.items():
            for _ in range(2):
                s.run(None, {name: example})
            for _ in range(block):
                t0 = time.perf_counter()
                s.run(None, {name: example})
                times[key].append(time.perf_counter() - t0)
    return {k: round(1000 * float(np.median(v)), 3) for k, v in times.items()}


def ort_direct(float_path: Path, out: Path, calib: np.ndarray, recommended: bool) -> None:
    """ONNX Runtime's quantize_static on the float ONNX: recommended CPU settings or defaults."""
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgecompress.export.ort_quant import CalibrationReader
    from edgecompress.quant.simulate import cpu_has_vnni

    logging.getLogger().setLevel(logging.ERROR)
    if recommended:  # the docstring's advice: u8 activations, s8 weights, reduce_range w/o VNNI
        kw = dict(per_channel=True, activation_type=QuantType.QUInt8,
                  weight_type=QuantType.QInt8, reduce_range=not cpu_has_vnni())
    else:
        kw = {}
    quantize_static(str(float_path), str(out), CalibrationReader(calib, "input"),
                    quant_format=QuantFormat.QDQ, **kw)


def _export(dm: ec.DeployableModel, path: Path) -> ec.export.base.Artifact:
    return dm.export("onnx", path, benchmark_runs=0, accuracy_samples=1)


def part_cifar(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from cifar_resnet import cifar_bundle, load_resnet

    model = load_resnet(args.weights)
    data = cifar_bundle(args.data, calib_size=args.calib, limit=args.limit)
    rows: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    fp32 = ec.Pipeline([ec.passes.Fuse()], measure=False).run(model, data)
    paths["fp32"] = work / "fp32.onnx"
    _export(fp32, paths["fp32"])
    rows["fp32"] = {"what": "FP32 ONNX (BN folded)"}
    recipe = None
    for method in args.methods:
        t0 = time.perf_counter()
        dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=args.calib, method=method)],
                         measure=NO_LATENCY).run(model, data)
        key = f"ptq_{method}"
        paths[key] = work / f"{key}.onnx"
        art = _export(dm, paths[key])
        rows[key] = {"what": f"ours: QuantizePTQ(method={method!r})",
                     "simulated_acc": dm.report.stages[-1].accuracy,
                     "parity_agreement": art.parity.top1_agreement,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "ort_kernels": art.notes["ort_kernels"]}
        recipe = dm.quant_recipe
    t0 = time.perf_counter()
    qat = ec.Pipeline([ec.passes.QuantizeQAT(epochs=args.qat_epochs, lr=1e-4, samples=args.calib,
                                             max_batches=args.qat_batches)],
                      measure=NO_LATENCY).run(model, data)
    paths["qat"] = work / "qat.onnx"
    art = _export(qat, paths["qat"])
    rows["qat"] = {"what": f"ours: QuantizeQAT(epochs={args.qat_epochs}, lr=1e-4)",
                   "simulated_acc": qat.report.stages[-1].accuracy,
                   "parity_agreement": art.parity.top1_agreement,
                   "learned_ranges_written": art.notes["learned_ranges_written"],
                   "seconds": round(time.perf_counter() - t0, 1),
                   "ort_kernels": art.notes["ort_kernels"]}
    calib = recipe.calib_samples.numpy()
    for key, recommended in (("ort_recommended", True), ("ort_defaults", False)):
        paths[key] = work / f"{key}.onnx"
        ort_direct(paths["fp32"], paths[key], calib, recommended)
        rows[key] = {"what": "onnxruntime quantize_static directly, " + (
            "recommended CPU settings (QDQ, per-channel, u8/s8, MinMax, reduce_range w/o VNNI)"
            if recommended else "library defaults (QDQ, per-tensor, s8/s8, MinMax)")}
    for key, path in paths.items():
        rows[key]["accuracy"] = onnx_accuracy(path, data)
        rows[key]["size_bytes"] = path.stat().st_size
    example = data.example_input.numpy()
    for key, ms in interleaved_latency(paths, example, args.threads, args.runs).items():
        rows[key]["latency_ms"] = ms
    base = rows["fp32"]
    for row in rows.values():
        row["drop_points"] = round(100 * (base["accuracy"] - row["accuracy"]), 2)
        row["smaller_x"] = round(base["size_bytes"] / row["size_bytes"], 2)
        row["speedup_x"] = round(base["latency_ms"] / row["latency_ms"], 2)
    return {"model": "CIFAR-10 ResNet-20 (pretrained)", "eval_images": _count(data.val),
            "calib_images": args.calib, "rows": rows}


def _count(loader: Any) -> int:
    return sum(len(y) for _, y in loader)


def part_fashion(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torchvision

    data = ec.data.idx(args.fashion, image_size=args.fashion_size, channels=3,
                       limit_train=args.fashion_train, limit_val=args.fashion_val,
                       batch_size=128, calib_size=args.calib)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    # torchvision builds MobileNetV3's BatchNorm with momentum 0.01, tuned for ImageNet-length
    # training: after 250 steps the running statistics are still near their initial values and
    # the eval-mode model is at chance (10.55 % measured). 0.1 is BatchNorm's usual default.
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = 0.1
    t0 = time.perf_counter()
    train(model, data.train, cross_entropy_loss,
          TrainConfig(epochs=args.fashion_epochs, lr=3e-3), val_loader=data.val)
    train_s = time.perf_counter() - t0
    model.eval()
    fp32 = ec.Pipeline([ec.passes.Fuse()], measure=False).run(model, data)
    _export(fp32, work / "mnv3_fp32.onnx")
    rows: dict[str, Any] = {"fp32": {"torch_acc": accuracy(model, data.val),
                                     "onnx_acc": onnx_accuracy(work / "mnv3_fp32.onnx", data)}}
    for per_channel in (False, True):
        gran = "per_channel" if per_channel else "per_tensor"
        for kind, p in (("ptq", ec.passes.QuantizePTQ(samples=args.calib, per_channel=per_channel,
                                                      method="percentile")),
                        ("qat", ec.passes.QuantizeQAT(epochs=1, lr=1e-4, samples=args.calib,
                                                      per_channel=per_channel))):
            dm = ec.Pipeline([p], measure=NO_LATENCY).run(model, data)
            path = work / f"mnv3_{kind}_{gran}.onnx"
            art = _export(dm, path)
            rows[f"{kind}_{gran}"] = {"simulated_acc": dm.report.stages[-1].accuracy,
                                      "onnx_acc": onnx_accuracy(path, data),
                                      "parity_agreement": art.parity.top1_agreement}
    base = rows["fp32"]["onnx_acc"]
    for row in rows.values():
        row["drop_points"] = round(100 * (base - row["onnx_acc"]), 2)
    return {"model": f"torchvision mobilenet_v3_small (random init), Fashion-MNIST "
                     f"{args.fashion_size}x{args.fashion_size} RGB",
            "training": f"FP32: {args.fashion_epochs} epochs (AdamW, lr 3e-3) on a seeded "
                        f"{args.fashion_train}-image train subset, {train_s:.0f} s; QAT: 1 epoch, "
                        f"lr 1e-4; evaluated on {args.fashion_val} test images", "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# INT8 quantization benchmark{result['tag']}", "",
             f"Command: `{result.get('command', '')}`", "",
             f"Load average at start/end: {result['load_start']:.2f} / {result['load_end']:.2f} "
             f"(2 cores shared with other jobs; latency ratios measured interleaved).", ""]
    if "cifar" in result:
        c = result["cifar"]
        lines += [f"## {c['model']}: {c['eval_images']} eval images, {c['calib_images']} "
                  f"calibration images", "",
                  "| variant | ONNX top-1 | drop (pts) | size (bytes) | smaller | p50 ms | speed-up |"
                  " simulated | parity agree |", "|---|---|---|---|---|---|---|---|---|"]
        for key, r in c["rows"].items():
            sim = f"{100 * r['simulated_acc']:.2f}" if "simulated_acc" in r else ""
            agree = f"{100 * r['parity_agreement']:.1f}%" if "parity_agreement" in r else ""
            lines.append(f"| {key}: {r['what']} | {100 * r['accuracy']:.2f} | {r['drop_points']}"
                         f" | {r['size_bytes']:,} | {r['smaller_x']}× | {r['latency_ms']} | "
                         f"{r['speedup_x']}× | {sim} | {agree} |")
        lines.append("")
    if "fashion" in result:
        f = result["fashion"]
        lines += [f"## {f['model']}", "", f"Training: {f['training']}.", "",
                  "| variant | ONNX top-1 | drop vs FP32 ONNX (pts) | simulated | parity agree |",
                  "|---|---|---|---|---|"]
        for key, r in f["rows"].items():
            sim = f"{100 * r['simulated_acc']:.2f}" if "simulated_acc" in r else \
                f"{100 * r['torch_acc']:.2f}"
            agree = f"{100 * r['parity_agreement']:.1f}%" if "parity_agreement" in r else ""
            lines.append(f"| {key} | {100 * r['onnx_acc']:.2f} | {r['drop_points']} | {sim} | "
                         f"{agree} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    os.environ.setdefault("EDGECOMPRESS_PROGRESS", "0")
    result: dict[str, Any] = {"tag": args.tag, "load_start": os.getloadavg()[0],
                              "torch": torch.__version__, "command": " ".join(["python", *sys.argv])}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights and args.data:
            result["cifar"] = part_cifar(args, Path(tmp))
            print(markdown({**result, "load_end": os.getloadavg()[0]}), flush=True)
        if args.fashion:
            result["fashion"] = part_fashion(args, Path(tmp))
    result["load_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    stem = f"quantize{('_' + args.tag) if args.tag else ''}"
    existing = RESULTS / f"{stem}.json"
    if existing.exists():  # keep the part not rerun
        old = json.loads(existing.read_text())
        for part in ("cifar", "fashion"):
            if part not in result and part in old:
                result[part] = old[part]
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
