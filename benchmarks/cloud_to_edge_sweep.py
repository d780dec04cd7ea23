"""One table from several ``cloud_to_edge.py`` runs (different pruning targets): size vs accuracy.

    python benchmarks/cloud_to_edge_sweep.py benchmarks/results/cloud_to_edge*.json \
        --out benchmarks/results/cloud_to_edge_sweep.md

Every number is read from the runs' JSON files; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def flag(command: str, name: str, default: str) -> str:
    words = command.split()
    return words[words.index(name) + 1] if name in words[:-1] else default


def student_label(r: dict[str, Any]) -> str:
    """The student and how it was distilled, for runs whose student is not the ResNet-20."""
    cmd = r["command"]
    family = r.get("student", {}).get("family", "resnet20")
    if family == "resnet20":
        return ""
    assistant = (f" through a ResNet-20 assistant ({flag(cmd, '--assistant-epochs', '4')} epochs)"
                 if "--assistant" in cmd.split() else "")
    return (f"student {family}{assistant}, distilled {flag(cmd, '--distill-epochs', '4')} epochs at lr "
            f"{flag(cmd, '--distill-lr', '1e-3')}")


def label(r: dict[str, Any]) -> str:
    """The run's student and pruning settings, read from its recorded command."""
    cmd = r["command"]
    if flag(cmd, "--prune-steps", "1") == "0":
        qat = (f", QAT {flag(cmd, '--qat-epochs', '1')} epochs at lr "
               f"{flag(cmd, '--qat-lr', '1e-4')}")
        return f"{student_label(r)}, no pruning{qat}"
    ignore = flag(cmd, "--ignore", "")
    # runs made before --select-on-val existed (they have no QOperator export) always selected
    selected = "--select-on-val" in cmd.split() or "onnx-qoperator" not in r["exports"]
    return ((f"{student_label(r)}, " if student_label(r) else "")
            + f"target_params {flag(cmd, '--target-params', '0.3')}, scope "
            f"{flag(cmd, '--scope', 'global')}, {flag(cmd, '--prune-steps', '1')} step(s) × "
            f"{flag(cmd, '--recover-epochs', '10')} epochs"
            + (f", {ignore} kept whole" if ignore else "")
            + (f", {flag(cmd, '--importance', 'l2')} importance" if "--importance" in cmd.split()
               else "")
            + (f", lr {flag(cmd, '--recover-lr', '')}" if "--recover-lr" in cmd.split() else "")
            + (f", {flag(cmd, '--recover-optimizer', 'adamw')} (weight decay "
               f"{flag(cmd, '--recover-wd', '1e-4')})" if "--recover-optimizer" in cmd.split()
               else "")
            + (f", distilled {flag(cmd, '--distill-epochs', '4')} epochs"
               if flag(cmd, "--distill-epochs", "4") != "4" and not student_label(r) else "")
            + (f", recovery alpha {flag(cmd, '--recover-alpha', '0.3')}"
               if "--recover-alpha" in cmd.split() else "")
            + (f", hints {flag(cmd, '--recover-hints', '')} (weight "
               f"{flag(cmd, '--hint-weight', '1.0')})" if "--recover-hints" in cmd.split() else "")
            + (f", QAT {flag(cmd, '--qat-epochs', '1')} epochs at lr {flag(cmd, '--qat-lr', '1e-4')}"
               if flag(cmd, "--qat-epochs", "1") != "1" or "--qat-lr" in cmd.split() else "")
            + (f", {r['train_images']:,} train / {r['val_images']:,} held out"
               if "--val-fraction" in cmd.split() else "")
            + (", best held-out epoch" if selected else ", last epoch"))


FORMATS = ("onnx", "onnx-qoperator", "tflite")


def row(path: Path, r: dict[str, Any]) -> str:
    stages = {s["stage"]: s for s in r["report"]["stages"]}
    # the float model that went into quantization: the stage before Fuse (pruned, or distilled)
    names = [s["stage"] for s in r["report"]["stages"]]
    pruned = stages[names[names.index("fuse") - 1]] if "fuse" in names else {}
    cells = [f"{label(r)} (`{path.stem}`)", f"{pruned.get('params', 0) / 1000:.1f}k",
             f"{100 * pruned.get('accuracy', float('nan')):.2f}%"]
    for fmt in FORMATS:
        e = r["exports"].get(fmt)
        if e is None:  # runs made before this artifact was exported
            cells += ["—", "", ""]
            continue
        if "size_bytes" not in e:
            cells += ["failed", "", ""]
            continue
        lost = 100 * (r["teacher_accuracy"] - e["accuracy"])
        cells += [f"{e['size_bytes']:,} B ({e['x_smaller_than_teacher_fp32_onnx']:.1f}×)",
                  f"{100 * e['accuracy']:.2f}% (−{lost:.2f})",
                  f"{100 * e['parity']['top1_agreement']:.1f}%"]
    cells.append(f"{r['seconds'] / 60:.0f} min ({r.get('threads', 1)} thr)")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="cloud_to_edge*.json files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    by_command = {}  # a run copied under two names is listed once, under its tagged name
    for p in sorted(args.runs, key=lambda p: (p.stem == "cloud_to_edge", p.name)):
        r = json.loads(p.read_text())
        by_command.setdefault(r["command"], (p, r))
    runs = sorted(by_command.values(), key=lambda pr: -pr[1]["report"]["stages"][-1]["params"])
    teacher = runs[0][1]
    lines = [f"Teacher: ResNet-56, {teacher['teacher_accuracy'] * 100:.2f}% top-1, FP32 ONNX "
             f"{teacher['teacher_fp32_onnx_bytes']:,} B (40× smaller: ≤ "
             f"{teacher['teacher_fp32_onnx_bytes'] // 40:,} B). Each run's command is in its "
             f"`.md` file; `agree` is INT8 top-1 agreement with the simulated INT8 model. "
             f"'best held-out epoch': each recovery kept its epoch with the best accuracy on the "
             f"held-out half, where accuracy is also measured (slightly optimistic); 'last "
             f"epoch': no selection. Points lost are against the teacher's accuracy on the same "
             f"run's held-out images, which depends on the split (`--seed`, `--val-fraction`).", "",
             "ONNX is QDQ; QOperator is the same int8 kernels written directly, in a smaller file "
             "(— : the run predates that export).", "",
             "| student and pruning (run) | params before INT8 | float top-1 before INT8 | ONNX INT8 | ONNX top-1 "
             "(points lost) | ONNX agree | ONNX QOperator INT8 | QOperator top-1 (points lost) | "
             "QOperator agree | TFLite INT8 | TFLite top-1 (points lost) | "
             "TFLite agree | wall time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    compact = next((r["teacher_fp32_onnx_bytes_compact_names"] for _, r in runs
                    if r.get("teacher_fp32_onnx_bytes_compact_names")), None)
    if compact:
        lines.insert(1, f"With the short tensor names the students get, the teacher's file is "
                        f"{compact:,} B; by that stricter measure 40× smaller means ≤ "
                        f"{compact // 40:,} B.")
        lines.insert(1, "")
    lines += [row(p, r) for p, r in runs]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
