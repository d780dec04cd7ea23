"""``edgecompress demo``: the whole flow on bundled data, measured, in a couple of minutes."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ._io import atomic_write_bytes
from .data import digits
from .models import small_cnn
from .passes import Pass, get_pass
from .pipeline import Pipeline
from .training import FineTune, TrainConfig, cross_entropy_loss, seed_everything, train

log = logging.getLogger("edgecompress")


def demo_passes() -> list[Pass]:
    """Structured pruning (30 % of channels, 3 epochs of recovery) → fuse → static INT8 PTQ.

    Fuse comes after the recovery training: fine-tuning a BatchNorm-folded network recovers
    much less accuracy."""
    return [get_pass("structured_prune")(ratio=0.3, finetune=FineTune(epochs=3, lr=2e-3)),
            get_pass("fuse")(),
            get_pass("quantize_ptq")(samples=256)]


def run_demo(out: Path, epochs: int = 4, image_size: int = 32, seed: int = 0,
             threads: int | None = None) -> None:
    """Train a SmallCNN on digits, compress it, export ONNX, benchmark, write the report."""
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    log.info("demo: writing into %s", out.resolve())
    seed_everything(seed)
    data = digits(image_size=image_size, batch_size=64, seed=seed)
    model = small_cnn(in_channels=1, num_classes=10, width=32)
    log.info("demo: training SmallCNN on scikit-learn digits (%d epochs)", epochs)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=epochs, lr=3e-3),
          val_loader=data.val, desc="train", seed=seed)
    pipe = Pipeline(demo_passes(), seed=seed)
    log.info("demo: running %s", pipe)
    dm = pipe.run(model, data, builder="edgecompress.models:small_cnn")
    # the demo's own folder: rerunning it replaces its own artifacts (never other files)
    art = dm.export("onnx", out / "model.onnx", threads=threads, overwrite=True)
    dm.save(out / "model.ecm", overwrite=True)
    stats = art.load(threads=threads).benchmark(warmup=10, runs=100)
    atomic_write_bytes(out / "report.json", dm.report.to_json().encode())
    atomic_write_bytes(out / "report.md",
                       ("# edgecompress demo report\n\n" + dm.report.to_markdown()).encode())
    print()
    print(dm.report)
    print()
    print(f"ONNX artifact: {art}")
    print(f"benchmark ({art.path.name}, 100 runs): {stats}")
    print(f"written: {out / 'model.onnx'}, {out / 'model.ecm'}, {out / 'report.json'}, "
          f"{out / 'report.md'}")
