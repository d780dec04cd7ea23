"""A small Llama on the edge: FP16 vs Q8_0 vs Q4_0 vs Q4_K GGUF files run by llama.cpp.

A Llama-architecture model of a few million parameters is trained here on the Python
documentation shipped with the interpreter (``pydoc_data``; documents split train / held-out
before the BPE tokenizer is trained). Each GGUF file comes out of an ``ec.Pipeline``
(``QuantizeWeights`` for the quantized ones) and is measured through llama.cpp: held-out
perplexity, file size, and — each file in a fresh process, the files interleaved over
``--rounds`` — load time, time to first token, prefill and decode tokens/s and peak RSS.
A pruned + distilled student and a smaller distilled student give the size-vs-perplexity
frontier (each as Q4_0). The load average is recorded; ratios measured interleaved count.

    nice -n 10 .venv/bin/python benchmarks/llm_edge.py --threads 2

Writes benchmarks/results/llm_edge.json and llm_edge.md.
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
from statistics import median
from typing import Any

import edgecompress as ec
from edgecompress.lm import lm_loss, tiny_llama
from edgecompress.lm.prune import prune_ffn
from edgecompress.training import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # name -> (passes, export type, effective bits per weight of the ggml type)
    "F16": ([], "f16", 16.0),
    "Q8_0": ([ec.passes.QuantizeWeights(bits=8, embeddings=True)], "auto", 8.5),
    "Q4_0": ([ec.passes.QuantizeWeights(bits=4, embeddings=True)], "auto", 4.5),
    "Q4_K": ([ec.passes.QuantizeWeights(bits=4, scheme="asym", embeddings=True)], "q4_k", 4.5),
}
SPEED_CHILD = """
import json, sys, psutil
from edgecompress.runtime.llama_runner import LlamaRunner
base = psutil.Process().memory_info().rss / 2**20
r = LlamaRunner(sys.argv[1], threads=int(sys.argv[2]), n_ctx=int(sys.argv[3]))
s = r.benchmark_generation(sys.argv[4], new_tokens=int(sys.argv[5]), runs=3, warmup=1)
d = s.to_dict(); d["rss_before_load_mb"] = base; d["model_rss_mb"] = s.peak_rss_mb - base
print(json.dumps(d))
"""


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--student-epochs", type=int, default=1)
    ap.add_argument("--student-batches", type=int, default=30, help="batches per student epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-batches", type=int, default=None, help="cap per epoch (quick runs)")
    ap.add_argument("--teacher", type=Path, default=None,
                    help="state_dict file: loaded when it exists, else written after training")
    ap.add_argument("--train-only", action="store_true", help="stop after training the teacher")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def train_lm(model: Any, data: Any, args: argparse.Namespace) -> float:
    """Train (or load) the teacher; returns the training seconds (0 when loaded)."""
    import torch

    if args.teacher is not None and args.teacher.exists():
        model.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
        return 0.0
    t0 = time.perf_counter()
    train(model, data.train, lm_loss, TrainConfig(epochs=args.epochs, lr=args.lr,
                                                  max_batches=args.max_batches, best_on_val=False),
          desc="lm")
    if args.teacher is not None:
        torch.save(model.state_dict(), args.teacher)
    return time.perf_counter() - t0


def export(model: Any, data: Any, passes: list, kind: str, path: Path) -> dict[str, Any]:
    """Pipeline → GGUF, verified in llama.cpp; returns what was measured."""
    dm = ec.Pipeline(passes, measure=ec.Measure(latency=False, macs=False)).run(model, data)
    art = dm.export("gguf", path, type=kind, benchmark_runs=0, parity_windows=16)
    rec = art.metadata["lm_parity"]
    return {"file": path.name, "size_bytes": art.size_bytes, "precision": art.precision,
            "params": dm.report.stages[-1].params, "torch_perplexity": dm.report.stages[-1].perplexity,
            "llama_cpp_perplexity": art.perplexity, "llama_cpp_next_token_acc": art.accuracy,
            "parity": rec, "tensor_types": art.notes.get("tensor_types")}


def tensor_bytes(path: Path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def speed(files: dict[str, Path], args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    """Each file in a fresh process, interleaved over rounds; medians per file."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in files}
    for _ in range(args.rounds):
        for name, path in files.items():
            out = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(path), str(args.threads),
                                  str(4 * args.seq_len), prompt, str(args.new_tokens)],
                                 capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "model_rss_mb")
    return {n: {**{k: median(r[k] for r in rs) for k in keys}, "prompt_tokens": rs[0]["prompt_tokens"],
                "system": rs[-1]["system"]} for n, rs in runs.items()}


def frontier(teacher: Any, data: Any, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Teacher, pruned + distilled, and smaller distilled students, each as Q4_0 GGUF."""
    q4 = [ec.passes.QuantizeWeights(bits=4, embeddings=True)]
    kd = dict(epochs=args.student_epochs, lr=args.lr, alpha=0.5, temperature=2.0, measure=False,
              max_batches=args.student_batches)
    students = {
        "pruned50+distilled": prune_ffn(teacher, 0.5),
        "small distilled": tiny_llama(data.vocab_size, hidden=args.hidden // 2, layers=args.layers // 2,
                                      heads=args.heads // 2, ffn=args.ffn // 2, seed=1),
    }
    rows = [{"model": "teacher", **export(teacher, data, q4, "auto", tmp / "teacher_q4.gguf")}]
    for name, student in students.items():
        t0 = time.perf_counter()
        dm = ec.Pipeline([ec.Distill(student=student, **kd)], measure=False).run(teacher, data)
        row = export(dm.model, data, q4, "auto", tmp / f"{name.split()[0]}_q4.gguf")
        rows.append({"model": name, "distill_s": time.perf_counter() - t0, **row})
    return rows


def goals(rows: dict[str, dict[str, Any]], tokenizer_bytes: int, fp16_tensors: int,
          sp: dict[str, Any]) -> dict[str, Any]:
    ppl = {k: r["llama_cpp_perplexity"] for k, r in rows.items()}
    out: dict[str, Any] = {
        "q8_0_ppl_within_1pct": abs(ppl["Q8_0"] / ppl["F16"] - 1) <= 0.01,
        "q4_0_ppl_within_5pct": abs(ppl["Q4_0"] / ppl["F16"] - 1) <= 0.05,
        "q4_k_ppl_within_5pct": abs(ppl["Q4_K"] / ppl["F16"] - 1) <= 0.05,
        "q4_0_decode_1.5x_fp16": sp["Q4_0"]["decode_tok_s"] / sp["F16"]["decode_tok_s"] >= 1.5,
        "q4_k_decode_1.5x_fp16": sp["Q4_K"]["decode_tok_s"] / sp["F16"]["decode_tok_s"] >= 1.5,
    }
    for name, (_, _, bpw) in VARIANTS.items():
        if name == "F16":
            continue
        nominal = int(name[1])
        size = rows[name]["size_bytes"]
        out[f"{name}_size_le_{nominal}/16_fp16+tokenizer"] = \
            size <= nominal / 16 * fp16_tensors + tokenizer_bytes
        out[f"{name}_size_le_{bpw}/16_fp16+tokenizer (ggml bits/weight incl. scales)"] = \
            size <= bpw / 16 * fp16_tensors + tokenizer_bytes
    return out


def markdown(result: dict[str, Any]) -> str:
    rows, sp = result["variants"], result["speed"]
    lines = [f"# llm_edge{result['tag']}", "", f"Command: `{result['command']}`", "",
             f"Model: {result['model']}; "
             + (f"trained {result['train_s']:.0f} s" if result['train_s'] else
                "weights loaded from --teacher (trained here earlier, see the notes)")
             + "; load average "
             f"{result['load_average_start']:.1f} → {result['load_average_end']:.1f}; "
             f"{result['threads']} threads; llama-cpp-python {result['llama_cpp_version']}.", "",
             "| file | size | ppl llama.cpp | ppl torch (simulated) | agree vs sim | load s | "
             "TTFT ms | prefill tok/s | decode tok/s | peak RSS MB | model RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        s = sp[name]
        lines.append(f"| {name} | {r['size_bytes'] / 1e6:.2f} MB | {r['llama_cpp_perplexity']:.3f} | "
                     f"{r['torch_perplexity']:.3f} | {100 * r['parity']['next_token_agreement']:.1f}% | "
                     f"{s['load_s']:.3f} | {s['ttft_ms']:.1f} | {s['prefill_tok_s']:.0f} | "
                     f"{s['decode_tok_s']:.1f} | {s['peak_rss_mb']:.0f} | {s['model_rss_mb']:.0f} |")
    lines += ["", "## Goals", ""] + [f"- {k}: {'PASS' if v else 'FAIL'}"
                                      for k, v in result["goals"].items()]
    lines += ["", "## Size vs perplexity (Q4_0 GGUF, llama.cpp)", "",
              "| model | params | size | ppl llama.cpp |", "|---|---:|---:|---:|"]
    for r in result["frontier"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['size_bytes'] / 1e6:.2f} MB | "
                     f"{r['llama_cpp_perplexity']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    load_start = os.getloadavg()[0]
    data = ec.data.text(vocab_size=args.vocab, seq_len=args.seq_len, batch_size=args.batch)
    teacher = tiny_llama(data.vocab_size, hidden=args.hidden, layers=args.layers, heads=args.heads,
                         ffn=args.ffn, context=4 * args.seq_len)
    train_s = train_lm(teacher, data, args)
    if args.train_only:
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = {n: export(teacher, data, p, k, tmp / f"{n}.gguf") for n, (p, k, _) in VARIANTS.items()}
        fp16_tensors = tensor_bytes(tmp / "F16.gguf")
        tokenizer_bytes = rows["F16"]["size_bytes"] - fp16_tensors
        prompt = data.texts[0][:600]
        sp = speed({n: tmp / f"{n}.gguf" for n in VARIANTS}, args, prompt)
        front = frontier(teacher, data, args, tmp)
    import llama_cpp

    result = {"tag": args.tag, "command": "nice -n 10 python " + " ".join(sys.argv),
              "model": f"Llama {args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, "
                       f"vocab {data.vocab_size}, {rows['F16']['params']:,} params",
              "train_s": train_s, "threads": args.threads, "llama_cpp_version": llama_cpp.__version__,
              "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
              "fp16_tensor_bytes": fp16_tensors, "non_tensor_bytes_fp16 (header+tokenizer)": tokenizer_bytes,
              "variants": rows, "speed": sp, "frontier": front,
              "goals": goals(rows, tokenizer_bytes, fp16_tensors, sp)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"llm_edge{args.tag}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"llm_edge{args.tag}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
