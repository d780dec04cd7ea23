"""INT8 vs FP32 speed of the benchmark detector at 320×320: which INT8 graph runs fastest here.

    nice -n 10 python benchmarks/detect_speed.py --weights /tmp/yolo_shapes.safetensors --out-dir /tmp/ds

The trained detector (benchmarks/train_detector.py) goes through detect.py's PTQ pipeline and is
exported several ways: FP32 ONNX (the reference), INT8 ONNX as QDQ (detect.py's artifact), as
QOperator, with per-tensor instead of per-channel weights, and OpenVINO FP32 / INT8 (from the
QDQ graph, and calibrated by NNCF). Every file runs in this one process, interleaved (one single
run of each in turn, p50 of single runs), 1 thread, ORT spinning off, the load printed. Each
file's mAP@0.5 on the held-out split says whether a faster variant still detects. With
``--profile``, ORT's profiler gives the time per operator type in the FP32 and QDQ INT8 graphs.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _detector as D  # noqa: E402
from _harness import Run, load, parser, table  # noqa: E402
from detect import YoloRaw, artifact_map, head, images_of  # noqa: E402

import edgecompress as ec  # noqa: E402

# name -> (pipeline option per_channel, format, export options)
VARIANTS = {
    "fp32 onnx": (None, "onnx", {}),
    "int8 onnx qdq": (True, "onnx", {}),
    "int8 onnx qoperator": (True, "onnx", {"quant_format": "qoperator"}),
    "int8 onnx qdq per-tensor": (False, "onnx", {}),
    # not an edgecompress artifact: ORT's quantizer on every op type of the FP32 file (SiLU as
    # QLinearSigmoid + QLinearMul, Concat, Add...), the decode tail float; no simulated
    # reference, so no parity: what a fully int8 body would run at, and its mAP
    "int8 onnx all ops (ORT direct)": (None, "ort-all", {}),
    "fp32 openvino": (None, "openvino", {}),
    "int8 openvino (qdq)": (True, "openvino", {}),
    "int8 openvino (nncf)": (True, "openvino", {"quantizer": "nncf"}),
}


def _args():
    ap = parser(__doc__)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--val", type=int, default=40, help="held-out images for each file's mAP")
    ap.add_argument("--runs", type=int, default=60, help="interleaved runs of each file")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--profile", action="store_true", help="ORT time per op type (FP32, QDQ)")
    return ap.parse_args()


def build(per_channel: bool | None, inner, bundle):
    passes = [] if per_channel is None else [ec.passes.QuantizePTQ(samples=64, per_channel=per_channel)]
    return ec.Pipeline(passes, measure=False, seed=0).run(YoloRaw(inner).eval(), bundle, head=head())


def export(args, inner, bundle, x_val, val, log) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    models: dict[Any, Any] = {}
    paths, rows = {}, []
    for name in args.variants:
        per_channel, fmt, opts = VARIANTS[name]
        if per_channel not in models:
            models[per_channel] = build(per_channel, inner, bundle)
        slug = name.replace(" ", "_").replace("(", "").replace(")", "")
        path = args.out_dir / (slug + (".onnx" if fmt in ("onnx", "ort-all") else ""))
        if fmt == "ort-all":
            paths[name] = ort_all_ops(paths["fp32 onnx"], path, bundle)
            rows.append({"variant": name, "precision": "int8-static (ORT direct)",
                         "parity": "no simulated reference",
                         **artifact_map(ec.load(path, verify=False), x_val, val)})
            log.info("%s", rows[-1])
            continue
        try:
            art = models[per_channel].export(fmt, path, benchmark_runs=0, on_parity_fail="keep",
                                             overwrite=True, task="detect", parity_samples=16, **opts)
        except ec.EdgeCompressError as exc:
            log.warning("%s: %s", name, exc)
            rows.append({"variant": name, "error": str(exc)[:300]})
            continue
        paths[name] = Path(art.path)
        row = {"variant": name, "precision": art.precision, "parity": str(art.parity)[:120],
               **artifact_map(ec.load(art.path), x_val, val)}
        log.info("%s", row)
        rows.append(row)
    return paths, rows


def ort_all_ops(fp32: Path, out: Path, bundle) -> Path:
    """ORT's quantize_static on every op type but Resize, x86 settings as edgecompress uses them (u8
    activations, s8 per-channel weights, 7-bit weights without VNNI), the decode tail float.
    The FP32 file's metadata is kept, so its runner decodes as the others do."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgecompress.export.detect_quant import float_tail
    from edgecompress.export.ort_quant import CalibrationReader
    from edgecompress.quant.simulate import cpu_has_vnni

    calib = bundle.calibration_inputs(64).numpy()
    proto = onnx.load(str(fp32))
    # ORT's quantizer refuses a Resize whose scales are a Constant node ("shared mode is not
    # supported for weight"): the two upsamplings stay float between their Q/DQ
    resize = [n.name for n in proto.graph.node if n.op_type == "Resize"]
    quantize_static(str(fp32), str(out), CalibrationReader(calib, proto.graph.input[0].name),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=not cpu_has_vnni(), nodes_to_exclude=float_tail(proto) + resize)
    q = onnx.load(str(out))
    del q.metadata_props[:]
    q.metadata_props.extend(proto.metadata_props)
    onnx.save(q, str(out))
    return out


def interleaved(paths: dict[str, Path], x: np.ndarray, runs: int) -> dict[str, Any]:
    """p50 ms of single runs, each file once in turn; chunk p50s for the spread."""
    runners = {k: ec.load(p, threads=1, spinning=False, verify=False) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(5):
            r(x)
    start = load()
    for _ in range(runs):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(x)
            times[k].append(1000 * (time.perf_counter() - t0))
    out = {k: {"p50": round(float(np.median(v)), 2),
               "chunks": [round(float(np.median(c)), 2) for c in np.array_split(np.asarray(v), 5)]}
           for k, v in times.items()}
    return {"ms": out, "load_start": start, "load_end": load(), "runs": runs}


def profile(path: Path, x: np.ndarray, runs: int = 20) -> dict[str, float]:
    """ORT's own per-node times summed by op type (ms per run), 1 thread, spinning off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as work:
        so.profile_file_prefix = str(Path(work) / "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(3 + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = 3 + runs
    return {k: round(v / total / 1000, 3) for k, v in by_op.most_common()}


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("detect_speed")
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    run = Run("detect_speed", args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    inner = D.load(args.weights)
    val = D.eval_set(args.val)
    train = ec.data.synthetic_detection(128, size=D.EVAL_SIZE, seed=2, classes=D.SHAPES,
                                        scale=D.EVAL_SCALE, max_objects=D.EVAL_OBJECTS)
    bundle = train.bundle(size=D.EVAL_SIZE, batch_size=8, val=val, seed=0, calib_size=64)
    x_val = images_of(val)
    paths, rows = export(args, inner, bundle, x_val, val, log)
    result: dict[str, Any] = {"rows": rows, "arch": D.arch_of(args.weights),
                              "latency": interleaved(paths, x_val[:1], args.runs)}
    if args.profile:
        result["profile_ms_per_op"] = {k: profile(paths[k], x_val[:1]) for k in
                                       ("fp32 onnx", "int8 onnx qdq") if k in paths}
    run.write(result, markdown(result, run))
    print(json.dumps(result["latency"], indent=1))


def markdown(result: dict[str, Any], run: Run) -> list[str]:
    lat = result["latency"]
    ref = lat["ms"].get("fp32 onnx", {}).get("p50")
    lines = ["# Detector INT8 speed at 320×320: which INT8 graph runs fastest here", "",
             f"`{run.command}`", "", f"{run.describe_load()}; interleaved load "
             f"{lat['load_start'][0]} → {lat['load_end'][0]}; {lat['runs']} runs of each, batch 1, "
             f"1 thread, ORT spinning off; {result['arch']}", ""]
    body = []
    for r in result["rows"]:
        t = lat["ms"].get(r["variant"])
        if t is None:
            body.append([r["variant"], "—", "—", "—", "—", r.get("error", "")[:100]])
            continue
        chunks = [ref_c / c for ref_c, c in zip(lat["ms"]["fp32 onnx"]["chunks"], t["chunks"])] \
            if ref else []
        spread = f"{min(chunks):.2f}–{max(chunks):.2f}" if chunks else ""
        body.append([r["variant"], r["precision"], t["p50"], f"{ref / t['p50']:.2f}× ({spread})"
                     if ref else "", f"{r['map50']:.3f} / {r['map50_95']:.3f}", r["parity"][:70]])
    lines += table(["file", "precision", "p50 ms", "vs FP32 ONNX (chunk spread)",
                    "mAP@0.5 / @0.5:0.95", "verification"], body)
    for name, ops in result.get("profile_ms_per_op", {}).items():
        lines += ["", f"ORT profile, {name}: ms per run by op type (sum {sum(ops.values()):.1f})", ""]
        lines += table(["op", "ms"], list(ops.items())[:12])
    return lines


if __name__ == "__main__":
    main()
