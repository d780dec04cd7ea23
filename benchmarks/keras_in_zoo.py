"""Models from other tools, in: keras.applications MobileNetV2 and EfficientNetB0
(``weights=None``: nothing downloaded), a two-input Keras model, a tf2onnx file and a
model-zoo-style ONNX file (torchvision ResNet-18 exported by ``torch.onnx``, opset 13) →
``ec.from_keras`` / ``ec.from_onnx`` → FP32 ONNX parity and INT8 (prune + INT8 for the ONNX
files) through the pipeline, each export verified through ONNX Runtime.

Random-init models on seeded random inputs: these are conversion and export checks (parity),
not accuracy measurements. The Keras models are built in a child process (this one never
imports TensorFlow). A freshly initialised keras.applications model keeps BatchNorm's default
statistics (mean 0, variance 1), so its activations shrink layer after layer and its logits come
out ~1e-17 (every max |diff| then looks perfect). The builder therefore sets each BatchNorm's
moving statistics from one training-mode pass over 32 random images (momentum 0 for that pass),
so the logits have a spread of order 1; every max |diff| is also reported relative to the
standard deviation of the reference outputs (``*_rel``).

    nice -n 10 python benchmarks/keras_in_zoo.py --keras-h5 ../shared/data/mlperf-tiny-resnet8/pretrainedResnet.h5 \\
        --size 96 --out benchmarks/results

Writes keras_in_zoo.json and keras_in_zoo.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress as ec
from edgecompress.data.bundle import Preprocess

log = logging.getLogger("keras_in_zoo")

BUILD = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np
keras.utils.set_random_seed(0)
out, size = sys.argv[1], int(sys.argv[2])
shape = (size, size, 3)  # logits out: a random-init 1000-class softmax is nearly flat
calib = np.random.default_rng(1).standard_normal((32, *shape)).astype("float32")

def calibrate_batchnorm(model):
    # default statistics (0, 1) make a random-init network's outputs vanish; one training-mode
    # pass with momentum 0 sets every BatchNorm's moving statistics to that pass's batch ones
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    model(calib, training=True)
    for l, m in zip(bns, saved):
        l.momentum = m
    return len(bns)

counts = {}
for name, app in (("mobilenet_v2", keras.applications.MobileNetV2),
                  ("efficientnet_b0", keras.applications.EfficientNetB0)):
    m = app(weights=None, input_shape=shape, classifier_activation=None)
    counts[name] = calibrate_batchnorm(m)
    m.save(f"{out}/{name}.keras")
open(out + "/batchnorm_calibrated.txt", "w").write(repr(counts))
img, vec = keras.Input((32, 32, 3), name="image"), keras.Input((8,), name="features")
h = keras.layers.Conv2D(8, 3, activation="relu")(img)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Concatenate()([h, keras.layers.Dense(8, activation="relu")(vec)])
keras.Model([img, vec], keras.layers.Dense(10)(h)).save(out + "/two_inputs.keras")
"""


def random_bundle(shape: tuple[int, ...], n: int = 96, layout: str = "NCHW",
                  num_classes: int = 10) -> ec.DataBundle:
    """Seeded random inputs; the labels are random too (no top-1 here means anything)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    ld = DataLoader(TensorDataset(x, y), batch_size=16)
    return ec.DataBundle(train=ld, val=ld, calib=ld, example_input=x[:1], num_classes=num_classes,
                         preprocess=Preprocess(layout=layout), name="random")


def output_std(model: torch.nn.Module, data: ec.DataBundle) -> float:
    """Standard deviation of ``model``'s outputs on the val samples: the scale diffs are read on."""
    with torch.no_grad():
        return float(model.eval()(data.samples("val", 64)).float().std())


def int8_onnx(model: torch.nn.Module, data: ec.DataBundle, out: Path,
              passes: list[ec.Pass]) -> dict[str, Any]:
    dm = ec.Pipeline([*passes, ec.passes.QuantizePTQ(samples=64)], measure=False).run(model, data)
    # kept when it fails (marked FAIL): the numbers of a failing file are what this records
    art = dm.export("onnx", out, benchmark_runs=5, on_parity_fail="keep")
    m = art.metrics()
    sim_std = output_std(dm.model, data)
    return {"bytes": m.size_bytes, "precision": m.precision, "max_abs_diff_vs_sim": m.max_abs_diff,
            "max_abs_diff_vs_sim_rel": m.max_abs_diff / sim_std, "sim_output_std": sim_std,
            "top1_agreement_vs_sim": m.top1_agreement, "parity_ok": m.parity_ok,
            "ort_kernels": art.notes.get("ort_kernels"), **steps(art),
            **ort_self_consistency(art.path, data, art.parity.outputs[0].get("step")),
            **vs_float(art.path, dm.float_model, data),
            "params_after": dm.report.stages[-1].params, "params_before": dm.report.stages[0].params}


def steps(art: ec.Artifact) -> dict[str, Any]:
    """The verification in the output's quantization steps, and how many top-1 flips were
    counted as ties (within one step)."""
    out, extra = art.parity.outputs[0], art.parity.metric_extra
    step = out.get("step")
    return {"output_step": step, "max_steps_vs_sim": out["max_abs_diff"] / step if step else None,
            "mean_steps_vs_sim": out["mean_abs_diff"] / step if step else None,
            "strict_top1_agreement_vs_sim": extra.get("strict_top1_agreement"),
            "tie_flips": extra.get("tie_flips")}


def ort_self_consistency(path: Path, data: ec.DataBundle, step: float | None) -> dict[str, Any]:
    """ONNX Runtime against itself: the QDQ graph run as written (no fusions: QuantizeLinear /
    DequantizeLinear around float ops, the numerics our simulation models) vs the same file with
    its int8 kernels (QLinearConv...), on the parity samples. Both are exact realisations of
    one quantized model; what separates them is rounding (float vs integer accumulation), so
    this is the floor any simulation of the int8 kernels can reach on this network."""
    import onnxruntime as ort

    x = data.samples("val", 64).numpy()
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level, so.log_severity_level = level, 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    diff = float(np.abs(outs[0] - outs[1]).max())
    return {"ort_qdq_vs_int8_kernels_max_abs_diff": diff,
            "ort_qdq_vs_int8_kernels_max_steps": diff / step if step else None,
            "ort_qdq_vs_int8_kernels_top1_agreement": float((outs[0].argmax(1) == outs[1].argmax(1)).mean())}


def vs_float(path: Path, float_model: torch.nn.Module, data: ec.DataBundle) -> dict[str, Any]:
    """The INT8 file against the float model it came from (after pruning, before quantization),
    on the same 64 val samples: what a user loses to INT8."""
    x = data.samples("val", 64)
    with torch.no_grad():
        ref = float_model.eval()(x).numpy()
    got = np.asarray(ec.load(path)(x.numpy()))
    return {"max_abs_diff_vs_float_rel": float(np.abs(ref - got).max() / ref.std()),
            "top1_agreement_vs_float": float((ref.argmax(1) == got.argmax(1)).mean())}


def fp32_onnx(model: torch.nn.Module, data: ec.DataBundle, out: Path) -> dict[str, Any]:
    dm = ec.Pipeline([], measure=False).run(model, data)
    m = dm.export("onnx", out, benchmark_runs=5).metrics()
    return {"bytes": m.size_bytes, "max_abs_diff_vs_torch": m.max_abs_diff,
            "max_abs_diff_vs_torch_rel": m.max_abs_diff / output_std(model, data),
            "top1_agreement_vs_torch": m.top1_agreement, "parity_ok": m.parity_ok}


def keras_app(path: Path, size: int, work: Path) -> dict[str, Any]:
    data = random_bundle((size, size, 3), n=64, layout="NHWC", num_classes=1000)
    x = data.samples("val", 16)
    model = ec.from_keras(path, x)  # built with logits out; their spread shows they are not flat
    src = model.edgecompress_source
    with torch.no_grad():
        logits = model(x)
    std = float(logits.std())
    row = {"conversion_max_abs_diff_vs_keras": src["conversion_max_abs_diff"],
           "conversion_max_abs_diff_rel": src["conversion_max_abs_diff"] / std,
           "logit_std": std, "logit_std_across_samples": float(logits.std(0).mean()),
           "logit_range": [float(logits.min()), float(logits.max())],
           "parity_le_1e-4": src["conversion_max_abs_diff"] <= 1e-4,
           "layout": src["layout"], "converter": src["converter"]}
    row["onnx_fp32"] = fp32_onnx(model, data, work / f"{path.stem}_fp32.onnx")
    row["onnx_int8"] = int8_onnx(model, data, work / f"{path.stem}_int8.onnx", [])
    return row


def two_inputs(path: Path, work: Path) -> dict[str, Any]:
    """Converted and checked against Keras, then through the pipeline with both inputs (batches
    of (image, features, label), ``DataBundle(transform=, labels=)``): FP32 ONNX and INT8 PTQ
    ONNX, each verified through ONNX Runtime with both named inputs fed."""
    g = np.random.default_rng(0)
    xs = [g.standard_normal((64, 32, 32, 3)).astype(np.float32), g.standard_normal((64, 8)).astype(np.float32)]
    model = ec.from_keras(path, [x[:16] for x in xs])
    src = model.edgecompress_source
    img, vec = (torch.from_numpy(x) for x in xs)
    ld = DataLoader(TensorDataset(img, vec, torch.zeros(len(img), dtype=torch.long)), batch_size=16)
    data = ec.DataBundle(train=ld, val=ld, calib=ld, num_classes=10, name="random-two-inputs",
                         preprocess=Preprocess(layout="NHWC"), transform=lambda b: (b[0], b[1]),
                         labels=lambda b: b[2])
    with torch.no_grad():
        std = float(model(img, vec).std())
    return {"conversion_max_abs_diff_vs_keras": src["conversion_max_abs_diff"],
            "conversion_max_abs_diff_rel": src["conversion_max_abs_diff"] / std, "output_std": std,
            "parity_le_1e-4": src["conversion_max_abs_diff"] <= 1e-4,
            "onnx_fp32": two_input_export(model, data, [], work / "two_inputs_fp32.onnx", std),
            "onnx_int8": two_input_export(model, data, [ec.passes.QuantizePTQ(samples=64)],
                                          work / "two_inputs_int8.onnx", std)}


def two_input_export(model: torch.nn.Module, data: ec.DataBundle, passes: list[ec.Pass], out: Path,
                     std: float) -> dict[str, Any]:
    """One pipeline run + ONNX export of the two-input model; a refusal is recorded."""
    try:
        dm = ec.Pipeline(passes, measure=False).run(model, data)
        art = dm.export("onnx", out, benchmark_runs=0, on_parity_fail="keep")
    except Exception as exc:  # noqa: BLE001 - recorded: what the pipeline says
        log.info("two-input %s: %s", out.name, traceback.format_exc())
        return {"ran": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    m = art.metrics()
    row = {"ran": True, "bytes": m.size_bytes, "precision": m.precision,
           "max_abs_diff_vs_torch": m.max_abs_diff, "max_abs_diff_vs_torch_rel": m.max_abs_diff / std,
           "top1_agreement_vs_torch": m.top1_agreement, "parity_ok": m.parity_ok,
           "inputs": [i["name"] for i in art.metadata["signature"]["inputs"]]}
    if passes:
        row.update(ort_kernels=art.notes.get("ort_kernels"), **steps(art),
                   params_before=dm.report.stages[0].params, params_after=dm.report.stages[-1].params)
    return row


def onnx_file(path: Path, data: ec.DataBundle, work: Path, layout: str | None) -> dict[str, Any]:
    model = ec.from_onnx(path, data.samples("val", 16), layout=layout)
    diff = model.edgecompress_source["conversion_max_abs_diff"]
    prune = ec.passes.StructuredPrune(ratio=0.25)
    return {"conversion_max_abs_diff_vs_ort": diff,
            "conversion_max_abs_diff_rel": diff / output_std(model, data),
            "prune_int8_onnx": int8_onnx(model, data, work / f"{path.stem}_pruned_int8.onnx", [prune])}


def torchvision_onnx(work: Path) -> Path:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = work / "resnet18_torchvision_opset13.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 64, 64), str(path), opset_version=13, dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


def tf2onnx_file(h5: Path, work: Path) -> Path:
    """MLPerf's ResNet-8 as tf2onnx writes it (the converter child process, used as a tool)."""
    out = work / "tf2onnx"
    out.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "edgecompress.convert._tf_worker", str(h5), str(out)],
                   check=True, capture_output=True)
    target = work / "resnet8_tf2onnx.onnx"
    (out / "model.onnx").rename(target)
    return target


def attempt(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
        results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
        log.error("%s failed:\n%s", name, traceback.format_exc())
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras-h5", type=Path, required=True, help="MLPerf's ResNet-8 (for the tf2onnx file)")
    ap.add_argument("--size", type=int, default=224, help="input size of the keras.applications models")
    ap.add_argument("--only", default=None, help="comma-separated subset of the checks")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-c", BUILD, str(work), str(args.size)], check=True)
        checks = {
            "mobilenet_v2": lambda: keras_app(work / "mobilenet_v2.keras", args.size, work),
            "efficientnet_b0": lambda: keras_app(work / "efficientnet_b0.keras", args.size, work),
            "two_inputs": lambda: two_inputs(work / "two_inputs.keras", work),
            "tf2onnx_resnet8": lambda: onnx_file(tf2onnx_file(args.keras_h5, work),
                                                 random_bundle((32, 32, 3), layout="NHWC"), work, "NHWC"),
            "torchvision_resnet18_onnx": lambda: onnx_file(torchvision_onnx(work),
                                                           random_bundle((3, 64, 64)), work, None)}
        wanted = args.only.split(",") if args.only else list(checks)
        for name in wanted:
            attempt(results, name, checks[name])
    results.update(command=" ".join(sys.argv), seconds=time.perf_counter() - t0,
                   load_average_start=load0, load_average_end=os.getloadavg()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keras_in_zoo.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "keras_in_zoo.md").write_text(markdown(results))
    print(markdown(results))


def _e(v: Any) -> str:
    return "–" if v is None else f"{v:.2e}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _int8_cells(q: dict[str, Any] | None) -> str:
    if not q or not q.get("bytes"):
        return "– | not run: " + (q or {}).get("error", "")[:300] + " | – | – | –"
    verdict = "PASS" if q["parity_ok"] else "FAIL"
    sim = (f"{verdict}: {_f(q.get('max_steps_vs_sim'))} steps max, {_f(q.get('mean_steps_vs_sim'))} mean; "
           f"top-1 {_pct(q.get('top1_agreement_vs_sim', q.get('top1_agreement_vs_torch')))} "
           f"(strict {_pct(q.get('strict_top1_agreement_vs_sim'))}, {q.get('tie_flips', '–')} ties)")
    own = (f"{_f(q.get('ort_qdq_vs_int8_kernels_max_steps'))} steps, "
           f"{_pct(q.get('ort_qdq_vs_int8_kernels_top1_agreement'))}")
    flt = f"{_e(q.get('max_abs_diff_vs_float_rel'))}, {_pct(q.get('top1_agreement_vs_float'))}"
    params = f"{q['params_before']:,} → {q['params_after']:,}" if "params_before" in q else "–"
    return f"{q['bytes']:,} | {sim} | {own} | {flt} | {params}"


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Models from other tools, in: conversion parity and INT8 export", "",
             f"Command: `{r['command']}`", "",
             "Random-init models on seeded random inputs (conversion and export checks, no "
             "accuracy). `rel` = max |diff| / std of the reference outputs. keras.applications "
             "models: BatchNorm statistics set from one training-mode pass over 32 random images "
             "(otherwise their logits are ~1e-17 and every diff looks perfect). INT8 parity is "
             "judged in the output's quantization steps (≤ 8 max, ≤ 1.5 mean) and top-1 "
             "agreement ≥ 98 % (flips within one step count as ties). *ORT vs itself*: the same "
             "INT8 file run as written (QDQ nodes around float ops, the numerics the simulation "
             "models) vs with ONNX Runtime's int8 kernels — the floor a simulation can reach.", "",
             "| model | conversion max abs diff (rel) | FP32 ONNX vs torch (rel) | INT8 ONNX bytes "
             "| INT8 vs simulated INT8 | ORT vs itself | INT8 vs float: rel, top-1 | "
             "params before → after |", "| --- | --- | --- | ---: | --- | --- | --- | --- |"]
    for name, row in r.items():
        if not isinstance(row, dict):
            continue
        if "error" in row:
            lines.append(f"| {name} | FAILED: {row['error'][:300]} | | | | | | |")
            continue
        conv = row.get("conversion_max_abs_diff_vs_keras", row.get("conversion_max_abs_diff_vs_ort"))
        fp32 = row.get("onnx_fp32") or {}
        fp32_cell = (f"{_e(fp32.get('max_abs_diff_vs_torch'))} ({_e(fp32.get('max_abs_diff_vs_torch_rel'))})"
                     if fp32.get("bytes") else "–" if not fp32 else f"not run: {fp32.get('error', '')[:200]}")
        q = row.get("onnx_int8") or row.get("prune_int8_onnx")
        lines.append(f"| {name} | {_e(conv)} ({_e(row.get('conversion_max_abs_diff_rel'))}) | "
                     f"{fp32_cell} | {_int8_cells(q)} |")
    lines += ["", f"{r['seconds']:.0f} s; load average {r['load_average_start']:.1f} → "
              f"{r['load_average_end']:.1f} (2 cores). Full numbers: keras_in_zoo.json.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
