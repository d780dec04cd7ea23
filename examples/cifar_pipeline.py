"""The CIFAR-10 pipeline: pretrained CIFAR ResNet-20 → Fuse → structured pruning with
distillation recovery → INT8 PTQ → ONNX and TFLite, measured on held-out images.

    python examples/cifar_pipeline.py \
        --weights ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th \
        --data ../shared/data/cifar10-jpeg-test/test.tar --out cifar-out
    python examples/cifar_pipeline.py --data some_images.tar --fast     # seconds, random weights

``--data`` is any folder or tar of ``class_name/xxx.jpg`` (the CIFAR-10 JPEG test set works).
The model definition comes from ``benchmarks/cifar_resnet.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import edgecompress as ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from cifar_resnet import CIFAR_MEAN, CIFAR_STD, load_resnet, prunable, resnet20  # noqa: E402


def main(argv: list[str] | None = None) -> ec.DeployableModel:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=None, help="pretrained ResNet-20 state dict")
    ap.add_argument("--out", type=Path, default=Path("cifar-out"))
    ap.add_argument("--fast", action="store_true", help="tiny run for tests")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = ec.data.image_folder(args.data, image_size=32, val_fraction=0.5, mean=CIFAR_MEAN,
                                std=CIFAR_STD, limit=200 if args.fast else None)
    # option-A shortcuts (subsample + zero-pad) become equivalent fixed 1×1 convolutions, so
    # the dependency graph can prune the residual channels too
    model = prunable(load_resnet(args.weights) if args.weights else resnet20())
    recover = ec.Distill.recover(epochs=1 if args.fast else 3, max_batches=2 if args.fast else None)
    pipe = ec.Pipeline([
        ec.passes.StructuredPrune(ratio=0.3, finetune=recover),
        ec.passes.Fuse(),  # after the training passes: BatchNorm helps recovery
        ec.passes.QuantizePTQ(samples=64 if args.fast else 512),
    ], measure=ec.Measure(latency_runs=5 if args.fast else 30))
    dm = pipe.run(model, data)
    for fmt, name in (("onnx", "model.onnx"), ("tflite", "model.tflite")):
        try:
            print(dm.export(fmt, args.out / name, benchmark_runs=5 if args.fast else 100))
        except ec.MissingExtraError as exc:
            print(f"skipping {fmt}: {exc}")
    print(dm.report)
    return dm


if __name__ == "__main__":
    main()
