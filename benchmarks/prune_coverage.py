"""Structured-prune every torchvision classification model and check the result end to end.

For each architecture (random weights, nothing downloaded): ``StructuredPrune(ratio=0.5,
scope="global")``,
then check that the pruned model runs, keeps the output shape, has fewer parameters and MACs,
exports to ONNX and matches the pruned torch model in ONNX Runtime (the exporter's own parity
check). Each model runs in a subprocess with a time limit, so one hang or crash cannot stop
the sweep. Prints a table and the success count; writes ``prune_coverage.json`` / ``.md``.

    python benchmarks/prune_coverage.py                # all models up to --max-params
    python benchmarks/prune_coverage.py --models resnet18 vit_b_16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the families the issue names first, so a partial sweep still covers them
PRIORITY = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
            "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_b1",
            "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_s", "regnet_x_400mf",
            "regnet_y_400mf", "densenet121", "convnext_tiny", "mnasnet1_0",
            "shufflenet_v2_x1_0", "squeezenet1_0", "squeezenet1_1", "vgg11", "vgg16_bn",
            "googlenet", "inception_v3", "vit_b_16", "swin_t", "swin_v2_t", "maxvit_t"]
# Torch-Pruning's graph is slow on these (concat index mapping, window reshapes): run them last
SLOW_LAST = ("swin_s", "swin_v2_s", "swin_b", "swin_v2_b", "densenet161", "densenet169",
             "densenet201")
# 224: positional embeddings / window partitions need it; VGG/AlexNet's adaptive pooling to
# 7×7 / 6×6 exports to ONNX only when the feature map is a multiple of it
FIXED_224 = ("vit_", "swin", "maxvit", "vgg", "alexnet")
MAX_REL_DIFF = 1e-3  # ONNX vs pruned torch, relative to the output's largest magnitude


def input_size(name: str, size: int) -> int:
    return 224 if name.startswith(FIXED_224) else size


def randomize_zero_heads(model) -> None:
    """Give zero-initialised Linear layers random weights.

    torchvision starts ViT's classification head at zero, so a random-weight ViT outputs exactly
    zero for every input and an ONNX parity check would only compare zeros with zeros."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            torch.nn.init.normal_(m.weight, std=0.02)


def check_one(name: str, size: int, ratio: float, seed: int) -> dict:
    """Prune one model and run every check; returns the row (raises nothing)."""
    import warnings

    import torch
    import torchvision

    import edgecompress as ec

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    row: dict = {"model": name, "input": size}
    t0 = time.perf_counter()
    try:
        model = torchvision.models.get_model(name, weights=None).eval()
        randomize_zero_heads(model)
        x = torch.randn(4, 3, size, size)
        data = ec.DataBundle(val=[x], example_input=x[:1], name="random")
        # scope="global": the committed results were measured with it (default until 2026-11-30)
        pipe = ec.Pipeline([ec.passes.StructuredPrune(ratio=ratio, scope="global")],
                           measure=ec.Measure(accuracy=False, latency=False), seed=seed)
        dm = pipe.run(model, data)
        dense, pruned = dm.report.stages[0], dm.report.stages[-1]
        with torch.no_grad():
            y_dense, y = model(x[:1]), dm.model(x[:1])
        row.update(forward=True, shape_ok=tuple(y.shape) == tuple(y_dense.shape),
                   params=[dense.params, pruned.params], macs=[dense.macs, pruned.macs],
                   params_ratio=pruned.params / dense.params,
                   macs_ratio=(pruned.macs / dense.macs) if dense.macs and pruned.macs else None,
                   prune_s=round(time.perf_counter() - t0, 1))
        with tempfile.TemporaryDirectory() as tmp:
            art = dm.export("onnx", Path(tmp) / "m.onnx", simplify=False, benchmark_runs=0,
                            parity_samples=4, threads=1)
        scale = float(y.abs().max())
        rel = art.parity.max_abs_diff / scale if scale > 0 else float("inf")
        row.update(onnx=True, max_abs_diff=art.parity.max_abs_diff, output_scale=scale,
                   rel_diff=rel, top1_agreement=art.parity.top1_agreement,
                   parity_ok=art.parity.passed and rel <= MAX_REL_DIFF)
    except Exception as exc:  # noqa: BLE001 - every failure is a row in the table
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["ok"] = bool(row.get("forward") and row.get("shape_ok") and row.get("parity_ok")
                     and row.get("params_ratio", 1) < 1 and (row.get("macs_ratio") or 1) < 1)
    return row


def model_list(names: list[str] | None, max_params: float) -> tuple[list[str], list[dict]]:
    import torchvision

    all_names = torchvision.models.list_models(module=torchvision.models)
    def size(n: str) -> int:
        return next(iter(torchvision.models.get_model_weights(n))).meta["num_params"]

    rest = sorted((n for n in all_names if n not in PRIORITY and n not in SLOW_LAST), key=size)
    chosen = names or ([n for n in PRIORITY if n in all_names] + rest
                       + [n for n in SLOW_LAST if n in all_names])
    keep, skipped = [], []
    for n in chosen:
        # the weights' metadata holds the parameter count: nothing is built or downloaded
        params = size(n)
        if params > max_params:
            skipped.append({"model": n, "params": params,
                            "skipped": f"{params / 1e6:.0f}M params > --max-params"})
        else:
            keep.append(n)
    return keep, skipped


def run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--size", str(input_size(name, args.size)),
           "--ratio", str(args.ratio)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False,
                             env={**os.environ, "EDGECOMPRESS_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "error": f"timeout after {args.timeout}s",
                "seconds": args.timeout}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"model": name, "ok": False,
                "error": f"crashed (exit {out.returncode}): {out.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def fmt(row: dict) -> str:
    if "skipped" in row:
        return f"| {row['model']} | – | skipped | {row['skipped']} |"
    pr, mr = row.get("params_ratio"), row.get("macs_ratio")
    if "not_run" in row:
        return f"| {row['model']} | – | not run | {row['not_run']} |"
    detail = row.get("error") or (f"params ×{pr:.2f}, MACs ×{mr:.2f}, ONNX max|diff| "
                                  f"{row.get('max_abs_diff', float('nan')):.2e} "
                                  f"(relative {row.get('rel_diff', float('nan')):.1e})")
    return f"| {row['model']} | {row.get('input', '')} | {'✅' if row['ok'] else '❌'} | {detail} |"


def write(rows: list[dict], skipped: list[dict], args: argparse.Namespace, done: bool) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ok = sum(r["ok"] for r in rows)
    summary = {"tried": len(rows), "succeeded": ok, "skipped_or_not_run": len(skipped),
               "success_rate": ok / len(rows) if rows else None, "ratio": args.ratio,
               "cnn_input": args.size, "complete": done, "load_average": os.getloadavg(),
               "commands": args.commands}
    (out / "prune_coverage.json").write_text(json.dumps({"summary": summary, "rows": rows,
                                                         "skipped": skipped}, indent=1))
    lines = [f"# Structured pruning coverage (torchvision, ratio {args.ratio:.2f})", "",
             (f"{ok}/{len(rows)} architectures pass every check "
              f"({100 * ok / max(len(rows), 1):.1f}%); {len(skipped)} skipped (size or time "
              f"budget). CNNs at {args.ratio}× channels, input {args.size} (224 where the "
              f"architecture needs it); random weights."), "",
             "Produced by: " + "; then ".join(f"`{c}`" for c in args.commands), "",
             "| model | input | ok | result |", "|---|---|---|---|",
             *[fmt(r) for r in rows + skipped]]
    (out / "prune_coverage.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="model names (default: all buildable)")
    ap.add_argument("--size", type=int, default=128, help="CNN input size (ViT/Swin/MaxViT: 224)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--max-params", type=float, default=150e6,
                    help="skip models with more parameters (memory/time on small machines)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="start no new model after this long (the rest are listed as not run)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--update", action="store_true",
                    help="re-check --models and replace their rows in the existing results")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(check_one(args.one, args.size, args.ratio, args.seed)))
        return
    args.commands = [" ".join(["python benchmarks/prune_coverage.py", *sys.argv[1:]])]
    names, skipped = model_list(args.models, args.max_params)
    print(f"load average {os.getloadavg()}; {len(names)} models, {len(skipped)} skipped by size")
    rows: list[dict] = []
    not_run: list[dict] = []
    if args.update:  # keep every other model's row; the re-checked ones are replaced in place
        old = json.loads((Path(args.out) / "prune_coverage.json").read_text())
        rows = old["rows"]
        args.commands = old["summary"].get("commands", []) + args.commands
        skipped = [s for s in old["skipped"] if s["model"] not in names]  # now run
    start = time.monotonic()
    for name in names:
        if args.budget_minutes and time.monotonic() - start > 60 * args.budget_minutes:
            not_run.append({"model": name, "ok": False,
                            "not_run": f"time budget of {args.budget_minutes:g} min used up"})
            continue
        row = run_child(name, args)
        where = [i for i, r in enumerate(rows) if r["model"] == name]
        if where:
            rows[where[0]] = row
        else:
            rows.append(row)
        print(fmt(row), f"({row.get('seconds', '?')} s)", flush=True)
        write(rows, skipped + not_run, args, done=False)
    write(rows, skipped + not_run, args, done=True)
    ok = sum(r["ok"] for r in rows)
    print(f"\n{ok}/{len(rows)} succeeded ({100 * ok / max(len(rows), 1):.1f}%), "
          f"{len(skipped)} skipped by size")


if __name__ == "__main__":
    main()
