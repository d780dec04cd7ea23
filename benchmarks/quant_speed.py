"""INT8 vs FP32 speed in ONNX Runtime: torchvision ResNet-18 and MobileNetV2 at 224×224.

Seeded random weights (speed does not depend on trained values); the INT8 model comes from
``ec.passes.QuantizePTQ`` calibrated on seeded random images and exported by the ONNX exporter
(ORT ``quantize_static``, QDQ). FP32 and INT8 are timed in alternating blocks in one process, batch 1,
``--threads`` intra-op threads, and the integer kernels ORT runs after its fusions are listed.
The load average is recorded: on a shared machine, rerun when it is low.

    .venv/bin/python benchmarks/quant_speed.py --threads 2

Writes benchmarks/results/quant_speed.json and quant_speed.md.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))

import edgecompress as ec  # noqa: E402
from edgecompress.quant.simulate import cpu_has_vnni  # noqa: E402
from _harness import Run, parser, table  # noqa: E402
from quantize import interleaved_latency  # noqa: E402


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--calib", type=int, default=32)
    args = ap.parse_args()
    run = Run("quant_speed", args)
    os.environ.setdefault("EDGECOMPRESS_PROGRESS", "0")
    import torchvision

    torch.manual_seed(0)
    images = torch.randn(args.calib + 1, 3, 224, 224)
    data = ec.DataBundle(calib=DataLoader(TensorDataset(images[1:]), batch_size=16),
                         example_input=images[:1])
    result = {"threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "vnni": cpu_has_vnni(),
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None).eval()
            fp32 = ec.Pipeline([ec.passes.Fuse()], measure=False).run(model, data)
            int8 = ec.Pipeline([ec.passes.QuantizePTQ(samples=args.calib, method="minmax")],
                               measure=False).run(model, data)
            paths = {"fp32": Path(tmp) / f"{name}_fp32.onnx", "int8": Path(tmp) / f"{name}_int8.onnx"}
            fp32.export("onnx", paths["fp32"], verify=False)
            art = int8.export("onnx", paths["int8"], verify=False)
            ms = interleaved_latency(paths, images[:1].numpy(), args.threads, args.runs)
            result["models"][name] = {
                "fp32_ms": ms["fp32"], "int8_ms": ms["int8"],
                "speedup_x": round(ms["fp32"] / ms["int8"], 2),
                "fp32_bytes": paths["fp32"].stat().st_size, "int8_bytes": paths["int8"].stat().st_size,
                "ort_kernels": art.notes["ort_kernels"], "weights": art.notes["weight_type"]}
            print(name, result["models"][name], flush=True)
    lines = ["# INT8 vs FP32 latency in ONNX Runtime (batch 1, 224×224)", "",
             f"{args.threads} threads; CPU {result['cpu']}, VNNI: {result['vnni']}; "
             f"{run.describe_load()}.", "", f"Command: `{run.command}`", ""]
    lines += table(("model", "FP32 p50 ms", "INT8 p50 ms", "speed-up", "FP32 bytes", "INT8 bytes",
                    "int8 kernels"),
                   [(name, r["fp32_ms"], r["int8_ms"], f"{r['speedup_x']}×", f"{r['fp32_bytes']:,}",
                     f"{r['int8_bytes']:,}", r["ort_kernels"]) for name, r in result["models"].items()])
    run.write(result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
