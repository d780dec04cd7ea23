"""GGUF exporter: a thin adapter from a DeployableModel to :mod:`.gguf_convert`.

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
from typing import TYPE_CHECKING, Any

from .._extras import available
from ..errors import ExportError, MissingExtraError
from ..metadata import read_sidecar, write_sidecar
from ..options import option
from .base import Artifact, Exporter, ExportOptions
from .gguf_convert import TYPES, convert, plan, tensor_types

if TYPE_CHECKING:
    from ..deployable import DeployableModel

log = logging.getLogger("edgecompress")


@dataclass
class GgufOptions(ExportOptions):
    """Options of the GGUF export."""

    type: str = option("auto", "GGUF weight type (auto: the one that realises the recipe).",
                       choices=("auto", *TYPES))
    tokenizer: Any = option(None, "tokenizers.Tokenizer to embed (None: the bundle's).",
                            recipe=False)
    context: int | None = option(None, "Context length written to the file (None: the model's).",
                                 low=1)
    parity_windows: int = option(8, "Held-out windows for next-token agreement and perplexity.",
                                 low=1)


class GgufExporter(Exporter):
    """HF Llama / Qwen2 / GPT-2 causal LMs → GGUF with the tokenizer, verified in llama.cpp."""

    Options = GgufOptions

    def decide_precision(self, dm: "DeployableModel", opts: Any) -> tuple[str, str | None]:
        if opts.verify and not available("llama_cpp"):
            raise MissingExtraError("llm", "llama_cpp", "verifying a GGUF file in llama.cpp "
                                    "(or export with verify=False and check it yourself)")
        p = plan(dm.quant_recipe, opts.type, opts.allow_float_fallback)
        return p.precision, p.fallback

    def write(self, dm: "DeployableModel", tmp: Path, opts: Any, precision: str,
              metadata: dict[str, Any]) -> dict[str, Any]:
        p = plan(dm.quant_recipe, opts.type, opts.allow_float_fallback)
        tokenizer = opts.tokenizer if opts.tokenizer is not None else \
            getattr(dm.data, "tokenizer", None)
        if tokenizer is None:
            raise ExportError("a GGUF file carries its tokenizer, and none was found: run the "
                              "pipeline on ec.data.text(...) or pass tokenizer=<tokenizers."
                              "Tokenizer> to export")
        model = self.source_model(dm, precision) if dm.quant_recipe is not None else dm.model
        notes = convert(model, tokenizer, tmp, p, _plain(metadata), opts.context)
        return {**notes, "tensor_types": tensor_types(tmp)}

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        write_sidecar(path, _plain(metadata), [path])

    @staticmethod
    def read_metadata(path: Path) -> dict[str, Any]:
        return read_sidecar(path)

    def verify(self, dm: "DeployableModel", artifact: Artifact, opts: Any) -> None:
        from ..lm.metrics import score
        from ..lm.parity import lm_parity

        runner = self.open_runner(artifact.path, opts)
        try:
            reference, ref_name = self.reference_model(dm, artifact.precision)
            windows = dm.sample_inputs(opts.parity_windows)
            out = runner(windows.numpy())
            float_model = dm.float_model if dm.quant_recipe is not None else None
            artifact.parity, record = lm_parity(out, windows, reference, ref_name,
                                                float_model, artifact.precision)
            if dm.data is not None and dm.data.val is not None:
                s = score(lambda x: runner(x.numpy()), dm.data.val, opts.accuracy_samples)
                artifact.perplexity, artifact.accuracy = s["perplexity"], s["next_token_accuracy"]
            if opts.benchmark_runs:
                artifact.latency = runner.benchmark(warmup=min(3, opts.benchmark_runs),
                                                    runs=opts.benchmark_runs, with_system=False)
        finally:
            runner.close()
        artifact.metadata.update(parity=artifact.parity.to_dict(), lm_parity=record,
                                 accuracy=artifact.accuracy, perplexity=artifact.perplexity)
        artifact.notes["lm_parity"] = record
        if not artifact.parity.passed:
            message = (f"PARITY CHECK FAILED for {artifact.path}: next-token agreement "
                       f"{record['next_token_agreement']:.3f} (min {record['min_agreement']}), "
                       f"perplexity change {100 * record['perplexity_delta']:+.2f}% (max "
                       f"{100 * record['max_perplexity_delta']:.1f}%) vs {ref_name}")
            if opts.on_parity_fail == "raise":
                from ..errors import ParityError
                raise ParityError(message)
            log.warning(message)

    def reference_model(self, dm: "DeployableModel", precision: str) -> tuple[Any, str]:
        if precision.endswith("-weight"):
            return dm.model, "simulated weight-quantized torch model"
        if dm.quant_recipe is not None and dm.float_model is not None:
            return dm.float_model, "float torch model (float fallback)"
        return dm.model, "torch model"


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(metadata, default=str))
