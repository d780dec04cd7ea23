"""Jetson: compress for a Jetson profile, then build and run a TensorRT engine.

On the workstation (no GPU needed):

    python examples/jetson_tensorrt.py prepare --out out/            # writes out/model_trt/

It runs the pipeline with the ``jetson-orin-nano`` profile and writes a *build bundle*: the ONNX
(QDQ for INT8), the exact ``trtexec`` command and ``build_engine.py``. Copy ``out/model_trt`` to
the Jetson, then on the Jetson:

    bash model_trt/build_engine.sh                                   # or: python build_engine.py
    python examples/jetson_tensorrt.py run model_trt/model.engine    # ec.load + benchmark

``run`` uses TensorRT with CUDA buffers through torch (no pycuda); without a GPU it stops with
the error that says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import edgecompress as ec
from edgecompress.models import small_cnn
from edgecompress.training import TrainConfig, cross_entropy_loss, train


def prepare(out: Path, fast: bool) -> ec.Artifact:
    data = ec.data.digits(image_size=16 if fast else 32)
    model = small_cnn(width=16 if fast else 32)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=1 if fast else 4, lr=3e-3),
          val_loader=data.val)
    pipe = ec.Pipeline([ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=128 if fast else 256)],
                       measure=ec.Measure(latency=False))
    dm = pipe.run(model, data, target="jetson-orin-nano")
    options = ec.targets.get_target("jetson-orin-nano").export_options("tensorrt", dm.quant_recipe.scheme)
    art = dm.export("tensorrt", out / "model_trt", build="device", max_batch=8, **options)
    print(dm.report)
    print(f"build bundle: {art.path} — copy it to the Jetson and run build_engine.sh there")
    return art


def run(engine: Path, runs: int) -> None:
    runner = ec.load(engine)  # TensorRTRunner: needs tensorrt and a CUDA GPU
    print(runner.info())
    print(runner.benchmark(warmup=50, runs=runs))


def main(argv: list[str] | None = None) -> object:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path("jetson-out"))
    p.add_argument("--fast", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("engine", type=Path)
    r.add_argument("--runs", type=int, default=500)
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(message)s")  # other libraries: warnings only
    logging.getLogger("edgecompress").setLevel(logging.INFO)
    try:
        if args.cmd == "prepare":
            return prepare(args.out, args.fast)
        return run(args.engine, args.runs)
    except ec.EdgeCompressError as exc:  # our errors say what to do: no traceback needed
        print(f"jetson_tensorrt.py {args.cmd}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
