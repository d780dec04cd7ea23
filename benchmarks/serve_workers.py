"""Throughput at concurrency = cores: the bare runner against server configurations, interleaved.

Every server variant is started once (all idle but the one under load), then each round runs
the bare runner (as many threads of single-sample calls as there are cores), every variant in
turn (the same raw-tensor /predict requests from benchmarks/http_load.py's closed-loop
client) and the bare runner again, so each ratio compares runs a few seconds apart on the
same machine load. Rounds repeat to show the spread; the load average is recorded before each.

    python benchmarks/serve_workers.py /tmp/serve_demo/model.onnx --rounds 3 --requests 3000

Variants (``--variants``, names from VARIANTS): one process with two inference threads (the
default server), 2 worker processes with threads, 2 worker processes running the model on
their event loops, and two of them again on asyncio + h11 instead of uvloop + httptools
(uvicorn's "auto" picks those when installed; the serve extra does not bring them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgecompress as ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import http_request, run_load  # noqa: E402
from serve_load import (_headers, bare_throughput, cpu_seconds, free_port,  # noqa: E402
                        start_server)

CORES = os.cpu_count() or 1
VARIANTS = {  # name: (what it is, edgecompress serve options)
    "one-process": ("1 process, 2 inference threads (the default)",
                    ["--workers", "1", "--infer-threads", str(CORES)]),
    "workers-threads": (f"{CORES} workers, 1 inference thread each",
                        ["--workers", str(CORES), "--infer-threads", "1"]),
    "workers-inline": (f"{CORES} workers, model on the event loop",
                       ["--workers", str(CORES), "--infer-threads", "0"]),
    "workers-inline-asyncio": (f"{CORES} workers, model on the event loop, asyncio + h11",
                               ["--workers", str(CORES), "--infer-threads", "0", "--loop",
                                "asyncio", "--http", "h11"]),
    "one-process-asyncio": ("1 process, 2 inference threads, asyncio + h11",
                            ["--workers", "1", "--infer-threads", str(CORES), "--loop",
                             "asyncio", "--http", "h11"]),
}


def one_round(servers: dict, args: argparse.Namespace, x: np.ndarray, request: bytes) -> dict:
    row = {"load_before": [round(v, 2) for v in os.getloadavg()], "variants": {}}
    bare = [bare_throughput(args.artifact, x, args.requests, CORES, args.threads)]
    for name, (proc, port) in servers.items():
        run_load(port, request, 300, CORES)  # fresh connections, warm
        cpu0 = cpu_seconds(proc.pid)
        res = run_load(port, request, args.requests, CORES).summary()
        res["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(proc.pid) - cpu0) /
                                                 args.requests, 3)
        row["variants"][name] = res
        print(f"  {name}: {res['throughput_rps']} req/s, p50 {res['p50_ms']} ms, "
              f"errors {res['errors']}", flush=True)
    bare.append(bare_throughput(args.artifact, x, args.requests, CORES, args.threads))
    row["bare_rps_runs"] = [round(b[0], 1) for b in bare]
    row["bare_rps"] = round(float(np.mean([b[0] for b in bare])), 1)
    row["bare_cpu_ms_per_call"] = round(float(np.mean([b[1] for b in bare])), 3)
    for res in row["variants"].values():
        res["vs_bare"] = round(res["throughput_rps"] / row["bare_rps"], 3)
        # requests per CPU-second (server + client) against the bare runner's calls per
        # CPU-second: what the throughput ratio tends to when the cores are the only limit
        res["cpu_ms_per_request"] = round(res["server_cpu_ms_per_request"]
                                          + res["client_cpu_ms_per_request"], 3)
        res["cpu_efficiency_vs_bare"] = round(row["bare_cpu_ms_per_call"]
                                              / res["cpu_ms_per_request"], 3)
    return row


def markdown(res: dict) -> str:
    names = list(res["rounds"][0]["variants"])
    lines_v = [f"- `{n}`: {VARIANTS[n][0]} (`{' '.join(VARIANTS[n][1])}`)" for n in names]
    lines = [f"# serve_workers: {res['artifact']}", "", f"`{res['command']}` (under `nice -n 10`)",
             "", f"{CORES} cores shared with other jobs (load average before each round in the "
             f"table). Concurrency {CORES} (= cores), {res['requests']} raw-tensor requests per "
             f"run, closed loop, keep-alive; runtime threads per call {res['threads']}. Bare = "
             f"{CORES} threads of single-sample runner calls, before and after each round.", "",
             *lines_v, "",
             "| round | load (1/5/15 min) | bare req/s | " + " | ".join(names) + " |",
             "|---:|---|---:|" + "---:|" * len(names)]
    for i, r in enumerate(res["rounds"], 1):
        cells = [f"{v['throughput_rps']} ({v['vs_bare']:.0%})" for v in r["variants"].values()]
        lines.append(f"| {i} | {r['load_before']} | {r['bare_rps']} | " + " | ".join(cells) + " |")
    bare_cpu = [r["bare_cpu_ms_per_call"] for r in res["rounds"]]
    lines += ["", "Per variant, median [min–max] over the rounds: throughput as a share of the "
              "bare runner's; the CPU (server processes + client) per request; and the CPU "
              f"efficiency, the bare runner's CPU per call (median {np.median(bare_cpu):.3f} "
              "ms) over that — requests per CPU-second against the bare runner's calls per "
              "CPU-second, which the load on a shared machine distorts far less than it "
              "distorts the throughput ratio:", ""]
    for name in names:
        shares = [r["variants"][name]["vs_bare"] for r in res["rounds"]]
        cpu = [r["variants"][name]["cpu_ms_per_request"] for r in res["rounds"]]
        eff = [r["variants"][name]["cpu_efficiency_vs_bare"] for r in res["rounds"]]
        lines.append(f"- {name}: throughput **{np.median(shares):.0%}** [{min(shares):.0%}–"
                     f"{max(shares):.0%}] of bare; {np.median(cpu):.3f} ms CPU/request; CPU "
                     f"efficiency {np.median(eff):.0%} [{min(eff):.0%}–{max(eff):.0%}]")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1, help="runtime threads per call")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated names from: " + ", ".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="serve_workers")
    args = ap.parse_args()
    x = ec.load(args.artifact).sample_input(1)
    request = http_request("/predict", x.astype("<f4").tobytes(), _headers(x))
    res = {"artifact": str(args.artifact), "command": " ".join(["python", *sys.argv]),
           "cores": CORES, "requests": args.requests, "threads": args.threads, "rounds": []}
    servers: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text("bench-token-" + os.urandom(12).hex())
        token.chmod(0o600)
        try:
            for i, name in enumerate(n.strip() for n in args.variants.split(",")):
                port = free_port()
                options = [*VARIANTS[name][1], "--threads", str(args.threads)]
                servers[name] = (start_server(args.artifact, port, options,
                                              Path(tmp) / f"state{i}", token), port)
            for i in range(args.rounds):
                print(f"round {i + 1}, load {os.getloadavg()}", flush=True)
                res["rounds"].append(one_round(servers, args, x, request))
                time.sleep(1)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
    res["load_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
