"""Quickstart: train a small CNN on bundled digits, compress it, export ONNX, benchmark it.

    python examples/quickstart.py            # full run (a couple of minutes on 2 cores)
    python examples/quickstart.py --fast     # seconds: fewer epochs, smaller images
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import edgecompress as ec
from edgecompress.models import small_cnn
from edgecompress.training import TrainConfig, cross_entropy_loss, train


def main(argv: list[str] | None = None) -> ec.DeployableModel:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fast", action="store_true", help="tiny run for tests")
    ap.add_argument("--out", type=Path, default=Path("quickstart-out"))
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(message)s")  # other libraries: warnings only
    logging.getLogger("edgecompress").setLevel(logging.INFO)

    size, epochs = (16, 1) if args.fast else (32, 4)
    data = ec.data.digits(image_size=size, batch_size=64, seed=0)
    model = small_cnn(width=16 if args.fast else 32)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=epochs, lr=3e-3),
          val_loader=data.val)

    pipe = ec.Pipeline([
        ec.passes.StructuredPrune(ratio=0.3, finetune=ec.FineTune(epochs=1, max_batches=5 if args.fast else None)),
        ec.passes.Fuse(),  # after the training passes: BatchNorm helps recovery
        ec.passes.QuantizePTQ(samples=128 if args.fast else 256),
    ], measure=ec.Measure(latency_runs=5 if args.fast else 30))
    dm = pipe.run(model, data, builder="edgecompress.models:small_cnn")
    print(dm.report)
    if args.fast:
        print("\n--fast trains 1 epoch on 16×16 images and fine-tunes the pruned model on 5 "
              "batches only, so its accuracies are low and drop after pruning: the run shows the "
              "flow, not the numbers. Run without --fast (4 epochs, full recovery) for those.\n")

    art = dm.export("onnx", args.out / "model.onnx", benchmark_runs=5 if args.fast else 50)
    print(art)
    runner = ec.load(art.path, threads=2)
    print(runner.benchmark(warmup=3, runs=10 if args.fast else 100))
    dm.save(args.out / "model.ecm")
    return dm


if __name__ == "__main__":
    main()
