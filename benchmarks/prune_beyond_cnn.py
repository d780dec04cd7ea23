"""StructuredPrune on transformers, hybrids, a detector and a segmenter (random init, small).

For each model: ``StructuredPrune(ratio=0.3)`` run as a pass on one example input; records OK or
the refusal, parameters and MACs before/after (measured), the seconds spent building
Torch-Pruning's dependency graphs (every build of the pass, including the re-runs that check a
suggested ignore=) and the total seconds. Writes ``prune_beyond_cnn.json`` / ``.md``.

    python benchmarks/prune_beyond_cnn.py
    python benchmarks/prune_beyond_cnn.py --models hf_vit deit_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn


class _LastHidden(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state


def _hf_vit() -> tuple[nn.Module, torch.Tensor]:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, num_labels=10)
    return ViTForImageClassification(cfg), torch.randn(1, 3, 32, 32)


def _hf_bert() -> tuple[nn.Module, torch.Tensor]:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    return _LastHidden(BertModel(cfg, add_pooling_layer=False)), torch.randint(0, 100, (1, 16))


def _timm(name: str, **kw: Any) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kw), torch.randn(1, 3, 64, 64)

    return build


def _tv(kind: str) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        from torchvision.models import detection, segmentation

        fn = (detection.ssdlite320_mobilenet_v3_large if kind == "ssdlite"
              else segmentation.lraspp_mobilenet_v3_large)
        return fn(weights=None, weights_backbone=None, num_classes=3), torch.randn(1, 3, 64, 64)

    return build


MODELS = {"hf_vit": _hf_vit, "hf_bert": _hf_bert,
          "deit_tiny": _timm("deit_tiny_patch16_224", img_size=64),
          "mobilevit_xxs": _timm("mobilevit_xxs"), "levit_128s": _timm("levit_128s", img_size=64),
          "lraspp": _tv("lraspp"), "ssdlite": _tv("ssdlite")}


def _timed_builds(seconds: list[float]) -> None:
    """Time every dependency-graph build the pass makes."""
    from edgecompress.passes import prune_structured
    from edgecompress.passes.pruning import engine

    original = engine.build_pruner

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    engine.build_pruner = prune_structured.build_pruner = timed


def run_one(name: str, builds: list[float]) -> dict[str, Any]:
    from edgecompress.context import PassContext
    from edgecompress.measure import count_macs, count_params
    from edgecompress.passes import StructuredPrune

    torch.manual_seed(0)
    model, x = MODELS[name]()
    model.eval()
    row: dict[str, Any] = {"model": name, "params": count_params(model), "macs": count_macs(model, x)}
    builds.clear()
    start = time.perf_counter()
    try:
        ctx = PassContext(data=SimpleNamespace(example_input=x))
        out = StructuredPrune(ratio=0.3).run(model, ctx).model
        row.update(status="OK", params_after=count_params(out), macs_after=count_macs(out, x),
                   kept_whole=ctx.notes.get("kept_whole"))
    except Exception as exc:  # noqa: BLE001 - the row records it
        row.update(status=f"refused: {type(exc).__name__}", message=str(exc))
    row.update(graph_builds=len(builds), graph_seconds=round(sum(builds), 2),
               total_seconds=round(time.perf_counter() - start, 2))
    return row


def markdown(rows: list[dict[str, Any]], command: str, load: tuple[float, ...]) -> str:
    lines = [f"`{command}` (load {', '.join(f'{v:.1f}' for v in load)})", "",
             "| model | status | params | MACs | graph builds / s | total s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['params']:,} → {r.get('params_after', '-'):,}" if "params_after" in r \
            else f"{r['params']:,}"
        macs = f"{r['macs']:,} → {r['macs_after']:,}" if r.get("macs_after") else f"{r['macs']:,}"
        lines.append(f"| {r['model']} | {r['status']} | {params} | {macs} | "
                     f"{r['graph_builds']} / {r['graph_seconds']} | {r['total_seconds']} |")
    lines += [""] + [f"- **{r['model']}**: {r['message']}" for r in rows if "message" in r]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    builds: list[float] = []
    _timed_builds(builds)
    rows = []
    for name in args.models:
        rows.append(run_one(name, builds))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "message"}), flush=True)
    load = os.getloadavg()
    command = "python " + " ".join(["benchmarks/prune_beyond_cnn.py", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune_beyond_cnn.json").write_text(json.dumps(
        {"command": command, "load": load, "rows": rows}, indent=1, default=str))
    (out / "prune_beyond_cnn.md").write_text(markdown(rows, command, load))
    print(markdown(rows, command, load))


if __name__ == "__main__":
    main()
