"""The names the code blocks of these docs take as given, as ``tests/test_docs.py`` sets them up.

Each page's ``python`` blocks run in order in one namespace that starts with these names (your
own model and data take their place in real use). ``EDGECOMPRESS_DOCS_FAST=1`` (the default in
the test) caps training in the blocks (every ``epochs=`` and ``Distill.recover()``) to 1 epoch
of 2 batches, timed runs to 5 and swaps the MobileNet student for ``small_cnn``, so every
block runs in seconds; ``EDGECOMPRESS_DOCS_FAST=0``
runs them exactly as written.
"""

from __future__ import annotations

import os
import re
from typing import Any

FAST = os.environ.get("EDGECOMPRESS_DOCS_FAST", "1") not in ("0", "", "false", "no")

# fast settings: (pattern, replacement) applied to a block's source before it runs
FAST_REWRITES = (
    (re.compile(r"\bepochs=\d+"), "epochs=1, max_batches=2"),
    (re.compile(r"\.recover\(\)"), ".recover(epochs=1, max_batches=2)"),
    # a torchvision student trains and is measured far slower on a busy 2-core CI machine
    (re.compile(r'"mobilenet_v3_small"'), '"small_cnn"'),
    (re.compile(r"\bruns=\d+"), "runs=5"),
    (re.compile(r"\bwarmup=\d+"), "warmup=1"),
)


def fast_source(source: str) -> str:
    """``source`` with the fast settings when EDGECOMPRESS_DOCS_FAST is on."""
    if not FAST:
        return source
    for pattern, replacement in FAST_REWRITES:
        source = pattern.sub(replacement, source)
    return source


def namespace() -> dict[str, Any]:
    """``ec``, ``model``/``teacher`` (small CNNs), ``data`` (bundled digits), ``dm`` (a float
    DeployableModel), ``float_dm``, ``int8_dm`` (static INT8), ``x`` (a batch of inputs), the
    loaders of ``data``, and ``recipe.yaml`` in the working folder."""
    import shutil
    from pathlib import Path

    import torch

    import edgecompress as ec
    from edgecompress.models import small_cnn

    torch.manual_seed(0)
    data = ec.data.digits(image_size=32, batch_size=64, seed=0)
    model = small_cnn(width=8)
    float_dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(model, data)
    int8_dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=64)], measure=False).run(model, data)
    recipe = Path(__file__).resolve().parent.parent / "examples" / "recipes" / "prune_int8.yaml"
    shutil.copy(recipe, "recipe.yaml")
    return {"ec": ec, "model": model, "teacher": small_cnn(width=16), "data": data,
            "dm": float_dm, "float_dm": float_dm, "int8_dm": int8_dm,
            "x": data.samples("val", 4).numpy(), "train_loader": data.train,
            "val_loader": data.val, "calib_loader": data.calib}
