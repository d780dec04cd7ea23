"""A minimal third-party plugin: one pass and one export format, found through entry points."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from edgecompress.export.base import Exporter
from edgecompress.metadata import write_sidecar
from edgecompress.options import option
from edgecompress.runtime.base import Runner, TensorSpec


@dataclass
class ScaleLogits(ec.Pass):
    """Multiplies the classifier's weights and bias by ``factor`` (argmax unchanged)."""

    name = "scale_logits"
    factor: float = option(2.0, "Scale factor.", low=0, low_open=True)

    def run(self, model, ctx):
        with torch.no_grad():
            for p in model.classifier.parameters():
                p.mul_(self.factor)
        ctx.note("scaled_by", self.factor)
        return model


class TracedExporter(Exporter):
    """Writes a TorchScript trace: the smallest possible example of an exporter plugin."""

    def write(self, job, tmp: Path, opts, precision):
        traced = torch.jit.trace(job.source.eval(), job.example)
        torch.jit.save(traced, str(tmp))
        return {"traced": True}

    def store_metadata(self, path: Path, metadata):
        write_sidecar(path, json.loads(json.dumps(metadata, default=str)), [path])


class TracedRunner(Runner):
    format = "traced"
    suffixes = (".traced",)

    def _load(self):
        self.module = torch.jit.load(str(self.path))
        self.inputs = [TensorSpec("input", (None, 1, 16, 16), "float32")]
        self.outputs = [TensorSpec("output", (None, 10), "float32")]

    def _run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


TRACED_FORMAT = ec.FormatSpec("traced", (".traced",), "TorchScript trace (plugin example)",
                              exporter="ec_demo_plugin:TracedExporter",
                              runner="ec_demo_plugin:TracedRunner", modules=("torch",))
