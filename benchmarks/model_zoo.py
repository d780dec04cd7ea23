"""Model zoo sweep: 30+ random-init models from timm, torchvision, Hugging Face transformers and
Ultralytics × (PTQ→ONNX, prune→ONNX, dynamic INT8→ONNX, TFLite, TorchScript, NCNN).

Every cell runs in its own process (forked from a server that imported torch & co. once)
with a timeout and is classified:

- **OK**: the artifact was written, verified PASS through its runner, and an independent
  re-check (the file reloaded with ``ec.load``, run on a fresh batch drawn with another seed,
  compared with the same reference under the same task bound) passes too;
- **refused**: one of edgecompress' errors (``EdgeCompressError``), its message recorded;
- **crash**: any other exception, or the child died without writing a result;
- **silent-wrong**: an artifact was written (claimed PASS) whose re-check fails the bound;
- **timeout**: the child ran past ``--timeout`` seconds.

Random init and random inputs: these are export / verification checks, not accuracy.

    nice -n 10 python benchmarks/model_zoo.py                       # everything, --jobs 1
    nice -n 10 python benchmarks/model_zoo.py --models hf/bert,tv/lraspp --cells ptq_onnx

Writes model_zoo<tag>.json and model_zoo<tag>.md (the command and the load inside).
"""

from __future__ import annotations

import json
import os
import sys
import subprocess
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Run, parser, table  # noqa: E402
from zoo_models import MODELS  # noqa: E402

CELLS = ("ptq_onnx", "prune_onnx", "dynamic_onnx", "tflite", "torchscript", "ncnn")
FORMAT = {"ptq_onnx": "onnx", "prune_onnx": "onnx", "dynamic_onnx": "onnx",
          "tflite": "tflite", "torchscript": "torchscript", "ncnn": "ncnn"}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "torchscript": ".ptl", "ncnn": ""}
STATUSES = ("OK", "refused", "crash", "silent-wrong", "timeout")


# -- one cell, in the child process ----------------------------------------------------------
def _passes(cell: str) -> list[Any]:
    import edgecompress as ec

    return {"ptq_onnx": [ec.passes.QuantizePTQ(samples=32)],
            "prune_onnx": [ec.passes.StructuredPrune(ratio=0.3, time_limit=150.0)],
            "dynamic_onnx": [ec.passes.QuantizeDynamic()]}.get(cell, [])


def _reference(dm: Any, precision: str) -> Any:
    """The model the exporter verified against (edgecompress.deployable.export_job's rule)."""
    if dm.quant_recipe is not None and precision.startswith(("int8", "int4")):
        return dm.model
    return dm.float_model if dm.quant_recipe is not None and dm.float_model is not None \
        else dm.model


def recheck(dm: Any, art: Any, fresh: Any) -> Any:
    """The written file, reloaded through ``ec.load`` and run on ``fresh`` samples, against the
    reference, under the task and bound its own verification used."""
    import edgecompress as ec
    from edgecompress.export.verify import check_parity

    realised = art.precision.startswith(("int8", "int4"))
    return check_parity(ec.load(art.path), _reference(dm, art.precision), fresh, art.precision,
                        "re-check", task=art.parity.task,
                        recipe=dm.quant_recipe if realised else None)


def _size(path: Path) -> int:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file())


def _ops(path: Path) -> dict[str, int]:
    """Counts of the INT8 kernels in an ONNX file (real int8, not a float file labelled int8)."""
    if path.suffix != ".onnx":
        return {}
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger",
                            "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def _parity(p: Any) -> dict[str, Any]:
    return {"passed": p.passed, "task": p.task, "metric": p.metric, "value": p.metric_value,
            "max_abs_diff": p.max_abs_diff, "failures": p.failures}


def run_cell(model_name: str, cell: str, work: Path) -> dict[str, Any]:
    """Build, compress, export and re-check one cell; the row it records."""
    import torch

    import edgecompress as ec

    torch.set_num_threads(1)  # --jobs children share 2 cores; each cell's time is not measured
    model, batches, fresh = MODELS[model_name]()
    data = ec.DataBundle(val=batches, calib=batches, name="random")
    dm = ec.Pipeline(_passes(cell), measure=False).run(model, data)
    fmt = FORMAT[cell]
    art = dm.export(fmt, work / f"model{SUFFIX[fmt]}", benchmark_runs=0, parity_samples=32)
    again = recheck(dm, art, fresh)
    row = {"status": "OK" if again.passed else "silent-wrong", "precision": art.precision,
           "bytes": _size(art.path), "parity": _parity(art.parity), "recheck": _parity(again),
           "int8_ops": _ops(art.path)}
    if cell == "prune_onnx":  # physically smaller: parameters before → after
        from edgecompress.measure import count_params

        row["params"] = [count_params(model), count_params(dm.model)]
    if not again.passed:
        row["message"] = f"written and PASSed its own verification, re-check: {again}"
    return row


def child(model_name: str, cell: str, result: Path) -> None:
    """The child process: one cell, its row written as JSON to ``result``."""
    from edgecompress.errors import EdgeCompressError

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            row = run_cell(model_name, cell, Path(tmp))
        except EdgeCompressError as exc:
            cause = exc.__cause__
            if wrapped_crash(exc):
                row = {"status": "crash", "error": f"{type(exc).__name__} <- "
                       f"{type(cause).__name__}", "message": str(exc)[:1500],
                       "where": _where(cause)}
            else:
                row = {"status": "refused", "error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - anything not ours is a crash, recorded
            row = {"status": "crash", "error": type(exc).__name__, "message": str(exc)[:1500],
                   "where": _where(exc)}
    row["seconds"] = round(time.perf_counter() - start, 1)
    result.write_text(json.dumps(row, default=str))


def wrapped_crash(exc: BaseException) -> bool:
    """A PassError the pipeline made of a foreign exception (``pass N 'name' failed: TypeError:
    ...``): it names the stage but says nothing of what to do, so it counts as a crash. Our
    deliberate refusals chain their cause too, with a message of their own."""
    from edgecompress.errors import EdgeCompressError, PassError

    cause = exc.__cause__
    return isinstance(exc, PassError) and cause is not None and \
        not isinstance(cause, EdgeCompressError) and \
        f"failed: {type(cause).__name__}: " in str(exc).split("\n")[0]


def _where(exc: BaseException) -> str:
    """The innermost edgecompress frame of a crash (where the fix goes), and the last frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "edgecompress" in f.filename]
    show = [ours[-1]] if ours else []
    show += [frames[-1]] if frames and (not ours or frames[-1] is not ours[-1]) else []
    return " | ".join(f"{f.filename.split('site-packages/')[-1].split('src/')[-1]}:{f.lineno} "
                      f"{f.line}" for f in show)


# -- the sweep, in the parent ------------------------------------------------------------------
# every cell runs in its own process, forked from a server that imported these once (importing
# them costs ~6 s of CPU per process, more than many cells)
PRELOAD = ["torch", "torchvision", "onnx", "onnxruntime", "timm", "transformers", "edgecompress",
           "edgecompress.export.onnx", "edgecompress.passes", "zoo_models"]


def _child_main(model_name: str, cell: str, result: str, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    child(model_name, cell, Path(result))


def run_in_child(model_name: str, cell: str, timeout: float, mp: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result, log = Path(tmp) / "row.json", Path(tmp) / "log.txt"
        start = time.perf_counter()
        proc = mp.Process(target=_child_main, args=(model_name, cell, str(result), str(log)))
        proc.start()
        proc.join(timeout)
        seconds = round(time.perf_counter() - start, 1)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"status": "timeout", "message": f"no result after {timeout:.0f} s",
                    "seconds": seconds}
        if result.exists():
            return json.loads(result.read_text())
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return {"status": "crash", "error": f"exit code {proc.exitcode}", "message": tail,
                "seconds": seconds}


def sweep(models: list[str], cells: list[str], jobs: int, timeout: float,
          on_row: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every (model, cell) in a child process, ``jobs`` at once; ``on_row(rows so far)`` after
    each (the results on disk stay current through a long run)."""
    import multiprocessing

    work = [(m, c) for m in models for c in cells]
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(PRELOAD)
    done: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(item: tuple[str, str]) -> dict[str, Any]:
        row = {"model": item[0], "cell": item[1], **run_in_child(*item, timeout, mp)}
        with lock:
            done.append(row)
            on_row(list(done))
        print(f"{row['model']:28s} {row['cell']:13s} {row['status']:12s} {row['seconds']:6.1f} s "
              f"{(row.get('message') or '')[:150]!r}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, work))


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def _cell_text(r: dict[str, Any]) -> str:
    if r["status"] == "OK":
        p = r["recheck"]
        value = "–" if p["value"] is None else f"{100 * p['value']:.1f} %"
        pruned = (f", params −{100 * (1 - r['params'][1] / r['params'][0]):.0f} %"
                  if r.get("params") else "")
        return f"OK {r['precision']} {r['bytes'] / 1e6:.2f} MB{pruned}, {p['metric']} {value}"
    return r["status"] if r["status"] != "refused" else f"refused ({r['error']})"


def markdown(rows: list[dict[str, Any]], run: Run, jobs: int, planned: int,
             commit: str) -> list[str]:
    c = counts(rows)
    total = len(rows)
    partial = "" if total == planned else f" (of {planned} planned: partial)"
    lines = ["# Model zoo: random-init models × compression cells", "",
             f"Command: `{run.command}` (--jobs {jobs}, code at {commit}); "
             f"{run.describe_load()}.", "",
             f"{total} cells{partial}: " + ", ".join(f"**{v} {k}**" for k, v in c.items())
             + f"; {100 * c['OK'] / max(total, 1):.1f} % OK.", "",
             "OK = written, PASSed its verification, and PASSes an independent re-check "
             "(reloaded with `ec.load`, fresh samples). Metric = the task metric of the "
             "re-check (top-1 agreement, pixel agreement, detection agreement, next-token "
             "agreement, cosine). Random init: export checks, not accuracy.", ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    by = {(r["model"], r["cell"]): r for r in rows}
    lines += table(["model", *cells], [[m, *(_cell_text(by[m, c]) if (m, c) in by else ""
                                             for c in cells)] for m in models])
    lines += ["", "## Not OK: messages", ""]
    for r in rows:
        if r["status"] != "OK":
            where = f" (at {r['where']})" if r.get("where") else ""
            msg = " ".join((r.get("message") or "").split())[:700]
            lines.append(f"- **{r['model']} × {r['cell']}**: {r['status']} "
                         f"{r.get('error', '')}{where}: {msg}")
    return lines


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated: {', '.join(CELLS)}")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once (2 shared cores)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per cell")
    args = ap.parse_args()
    models, cells = args.models.split(","), args.cells.split(",")
    unknown = [m for m in models if m not in MODELS] + [c for c in cells if c not in CELLS]
    if unknown:
        ap.error(f"unknown model or cell: {unknown}; models: {list(MODELS)}, cells: {CELLS}")
    run = Run("model_zoo", args)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()

    def write(rows: list[dict[str, Any]]) -> tuple[Path, Path]:
        order = {(m, c): i for i, (m, c) in enumerate((m, c) for m in models for c in cells)}
        rows = sorted(rows, key=lambda r: order[r["model"], r["cell"]])
        result = {"counts": counts(rows), "ok_fraction": counts(rows)["OK"] / max(len(rows), 1),
                  "cells_planned": len(order), "jobs": args.jobs, "timeout": args.timeout,
                  "commit": commit,
                  "rows": rows}
        return run.write(result, markdown(rows, run, args.jobs, len(order), commit))

    rows = sweep(models, cells, args.jobs, args.timeout, write)
    js, md = write(rows)
    print(json.dumps(counts(rows)), js, md)


if __name__ == "__main__":
    main()
