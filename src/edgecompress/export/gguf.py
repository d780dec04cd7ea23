"""GGUF exporter: a thin adapter from an ExportJob to :mod:`.gguf_convert`.

The recipe decides the file type (``type="auto"``): no recipe → F16; ``QuantizeWeights`` 8-bit
symmetric → Q8_0, 4-bit symmetric → Q4_0, 4-bit asymmetric → Q4_1 (or ``type="q4_k"``). A type
that cannot hold the recipe is refused with the type that can. The file verifies itself in
llama.cpp: next-token agreement and perplexity delta against the simulated and the float model on
held-out windows, recorded in the sidecar metadata (``<file>.gguf.json``) and the report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._extras import available
from ..artifact import Artifact
from ..errors import ExportError, MissingExtraError
from ..job import ExportJob, artifact_metadata
from ..metadata import read_sidecar, write_sidecar
from ..options import option
from ..runtime.base import Runner
from .base import Exporter, ExportOptions
from .gguf_convert import TYPES, convert, plan, tensor_types
from .verify import Verification, artifact_latency

log = logging.getLogger("edgecompress")


@dataclass
class GgufOptions(ExportOptions):
    """Options of the GGUF export."""

    type: str = option("auto", "GGUF weight type (auto: the one that realises the recipe).",
                       choices=("auto", *TYPES))
    tokenizer: Any = option(None, "The tokenizers.Tokenizer to embed (None: the data's).",
                            recipe=False)
    context: int | None = option(None, "Context length written to the file (None: the model's).",
                                 low=1)
    parity_windows: int = option(8, "Held-out windows for next-token agreement and perplexity.",
                                 low=1)


class GgufExporter(Exporter):
    """HF Llama / Qwen2 / GPT-2 causal LMs → GGUF with the tokenizer, verified in llama.cpp."""

    Options = GgufOptions

    def decide_precision(self, recipe: Any, opts: Any) -> tuple[str, str | None]:
        if opts.verify and not available("llama_cpp"):
            raise MissingExtraError("llm", "llama_cpp", "verifying a GGUF file in llama.cpp "
                                    "(or export with verify=False and check it yourself)")
        p = plan(recipe, opts.type, opts.allow_float_fallback)
        return p.precision, p.fallback

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        # job.recipe is None for a float export (also a float fallback): plan() writes f16/f32
        p = plan(job.recipe, opts.type, opts.allow_float_fallback)
        tokenizer = opts.tokenizer if opts.tokenizer is not None else job.tokenizer
        if tokenizer is None:
            raise ExportError("a GGUF file carries its tokenizer, and none was found: run the "
                              "pipeline on ec.data.text(...) or pass tokenizer=<tokenizers."
                              "Tokenizer> to export")
        metadata = artifact_metadata(job.metadata, self.spec.name, precision)
        notes = convert(job.source, tokenizer, tmp, p, _plain(metadata), opts.context)
        return {**notes, "tensor_types": tensor_types(tmp)}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, _plain(metadata), [path])

    @staticmethod
    def read_metadata(path: Path) -> dict[str, Any]:
        return read_sidecar(path)

    def check(self, runner: Runner, job: ExportJob, precision: str, opts: Any) -> Verification:
        """Next-token agreement and perplexity delta on held-out windows (vs the simulated and
        the float model), perplexity on the evaluation text, latency, all through llama.cpp."""
        from ..lm.metrics import score
        from ..lm.parity import lm_parity

        try:
            windows = job.parity_inputs[:opts.parity_windows]
            out = runner(windows.numpy())
            float_model = job.float_model if job.recipe is not None else None
            parity, record = lm_parity(out, windows, job.reference, job.reference_name,
                                       float_model, precision)
            perplexity = accuracy = None
            if job.eval_data is not None:
                s = score(lambda x: runner(x.numpy()), job.eval_data, opts.accuracy_samples)
                perplexity, accuracy = s["perplexity"], s["next_token_accuracy"]
            latency = artifact_latency(runner, opts.benchmark_runs, warmup=3)
        finally:
            runner.close()
        return Verification(parity, accuracy, latency, perplexity, {"lm_parity": record})

    def failure_message(self, artifact: Artifact) -> str:
        record = artifact.notes["lm_parity"]
        return (f"PARITY CHECK FAILED for {artifact.path}: next-token agreement "
                f"{record['next_token_agreement']:.3f} (min {record['min_agreement']}), "
                f"perplexity change {100 * record['perplexity_delta']:+.2f}% (max "
                f"{100 * record['max_perplexity_delta']:.1f}%) vs {artifact.parity.reference}")


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(metadata, default=str))
