"""Bounded load on `edgecompress serve` over loopback, against the bare runner.

The server runs in its own process (`python -m edgecompress serve`); a closed-loop client of
raw keep-alive sockets (benchmarks/http_load.py, ~0.1 ms CPU per request) sends raw tensors to
/predict at each concurrency. Reported per level: p50/p99 latency, throughput and its ratio to
the bare runner, errors (503 counted apart), the server's and the client's CPU per request, the
mean rows per runner call (micro-batching), and the server's RSS before and after. Then a swap
(POST /model) while the client keeps the load on, counting failed requests. The bare runner's
throughput (the same artifact, single-sample calls from as many threads as there are cores) is
measured just before and after the concurrency=cores level, in the same run, so the ratio
shares the machine load; so is the HTTP floor (the same client against a no-op server on the
same stack), which bounds what any server can reach at that concurrency.

Goals (issue #27): 0 errors below the queue bound, 503 (never a crash) above it, throughput
>= 85 % of the bare runner's at concurrency = cores, RSS growth < 5 %, 0 failed requests during
a swap under load.

    python benchmarks/serve_load.py edgecompress-demo/model.onnx --requests 5000 \
        --concurrency 1,2,4,16,64 --out benchmarks/results

The demo model runs in well under a millisecond, so HTTP costs more than inference; to see the
ratio where inference dominates, ``--make-model DIR`` first writes a heavier artifact (a
random-init SmallResNet of width 64 at 64x64, INT8 ONNX through the library) and serves that:

    python benchmarks/serve_load.py --make-model /tmp/heavy --requests 1000 --name serve_load_heavy
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import edgecompress as ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import http_request, run_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of the server: of its worker processes too with --workers N."""
    total = 0.0
    for p in {pid, *server_pids(pid)}:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids(pid: int) -> list[int]:
    """The processes that serve: the server itself, or with --workers N its worker children."""
    import psutil

    children = [c.pid for c in psutil.Process(pid).children()]
    return children or [pid]


def cpu_seconds(pid: int, loop_only: bool = False) -> float:
    """User + system CPU time so far of the server's processes (their main threads only, which
    run the event loops, with ``loop_only``). The supervisor of --workers N only accepts
    connections; its CPU is counted too."""
    total = 0.0
    for p in {pid, *server_pids(pid)}:
        if loop_only and p == pid and server_pids(pid) != [pid]:
            continue
        total += _stat_cpu(Path(f"/proc/{p}/task/{p}/stat" if loop_only else f"/proc/{p}/stat"))
    return total


def server_options(args: argparse.Namespace) -> list[str]:
    return ["--workers", str(args.workers), "--infer-threads", str(args.infer_threads),
            "--queue", str(args.queue), "--threads", str(args.threads), "--max-batch",
            str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--loop",
            args.loop, "--http", args.http]


def start_server(artifact: Path, port: int, options: list[str], state: Path,
                 token_file: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgecompress", "serve", str(artifact), "--port", str(port),
           *options, "--state-dir", str(state), "--token-file", str(token_file)]
    return _wait_ready(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True), port, "/health")


def start_floor_server(port: int, answer_bytes: int) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).with_name("http_load.py")), "--floor-server",
           str(port), "--answer-bytes", str(answer_bytes)]
    return _wait_ready(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True), port, None)


def _wait_ready(proc: subprocess.Popen, port: int, path: str | None) -> subprocess.Popen:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                return proc
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return proc
        except (httpx.TransportError, OSError):
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
    raise RuntimeError("server did not start")


def batch_rows(url: str) -> tuple[float, float]:
    """(sum, count) of the server's rows-per-runner-call histogram (seen by each request)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("edgecompress_batch_rows_sum", "edgecompress_batch_rows_count")):
            name, value = line.split()
            values[name.rsplit("_", 1)[1]] = float(value)
    return values.get("sum", 0.0), values.get("count", 0.0)


def measured_level(proc: subprocess.Popen, url: str, port: int, request: bytes, total: int,
                   concurrency: int) -> dict:
    """One load level against the server, with its CPU per request (all of it, and the event
    loop's thread apart from the inference workers) and mean batch rows."""
    rows0, cpu0, loop0 = batch_rows(url), cpu_seconds(proc.pid), cpu_seconds(proc.pid, True)
    res = run_load(port, request, total, concurrency).summary()
    cpu1, loop1, rows1 = cpu_seconds(proc.pid), cpu_seconds(proc.pid, True), batch_rows(url)
    res["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / max(1, total), 3)
    res["loop_cpu_ms_per_request"] = round(1000 * (loop1 - loop0) / max(1, total), 3)
    res["workers_cpu_ms_per_request"] = round(res["server_cpu_ms_per_request"]
                                              - res["loop_cpu_ms_per_request"], 3)
    calls = rows1[1] - rows0[1]
    res["mean_batch_rows"] = round((rows1[0] - rows0[0]) / calls, 2) if calls else None
    return res


def bare_throughput(artifact: Path, x: np.ndarray, total: int, callers: int,
                    threads: int) -> tuple[float, float]:
    """Requests/s of `callers` threads calling one runner directly (no HTTP), and CPU ms/call."""
    runner = ec.load(artifact, threads=threads)
    for _ in range(20):
        runner(x)
    per = total // callers

    def calls(_: int) -> None:
        for _ in range(per):
            runner(x)

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(calls, range(callers)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return per * callers / wall, 1000 * cpu / (per * callers)


def floor_level(request: bytes, total: int, concurrency: int, answer_bytes: int) -> dict:
    """The same client against a server that does nothing: the HTTP round-trip floor."""
    port = free_port()
    proc = start_floor_server(port, answer_bytes)
    try:
        run_load(port, request, 300, concurrency)
        cpu0 = cpu_seconds(proc.pid)
        res = run_load(port, request, total, concurrency).summary()
        res["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(proc.pid) - cpu0) /
                                                 max(1, total), 3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return res


def swap_under_load(url: str, port: int, artifact: Path, token: str, request: bytes,
                    total: int, concurrency: int) -> dict:
    import httpx

    result: dict = {}

    def swap() -> None:
        time.sleep(0.5)
        with open(artifact, "rb") as fh:
            r = httpx.post(url + "/model", files={"artifact": (artifact.name, fh.read())},
                           headers={"authorization": f"Bearer {token}"}, timeout=120)
        result["swap_status"] = r.status_code
        result["swap_body"] = r.json().get("error") if r.status_code != 200 else "swapped"

    t = threading.Thread(target=swap)
    t.start()
    stats = run_load(port, request, total, concurrency).summary()
    t.join()
    return {**stats, **result}


def markdown(res: dict) -> str:
    lines = [f"# serve_load: {res['artifact']}", "", f"`{res['command']}` (under `nice -n 10`)",
             "", f"Machine: {res['cpu_count']} cores, load average before {res['load_before']} / "
             f"after {res['load_after']} (other jobs share the machine). Server: "
             f"{res['workers']} process(es) × {res['infer_threads']} inference threads (0: on "
             f"the event loop), queue {res['queue']}, max batch {res['max_batch']}, "
             f"batch wait {res['batch_wait_ms']} ms, {res['threads']} runtime thread(s) per "
             f"call, loop {res['loop']}, http {res['http']}; bound = processes × (threads + "
             f"queue) = {res['bound']}. Client: raw "
             f"keep-alive sockets, closed loop (benchmarks/http_load.py).", "",
             "| concurrency | ok | 503 | errors | p50 ms | p99 ms | req/s | vs bare | "
             "rows/call | server CPU ms/req (loop + workers) | client CPU ms/req |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["levels"]:
        lines.append(f"| {r['concurrency']} | {r['ok']} | {r['rejected_503']} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | "
                     f"{r['throughput_rps'] / res['bare_rps']:.0%} | {r['mean_batch_rows']} | "
                     f"{r['server_cpu_ms_per_request']} ({r['loop_cpu_ms_per_request']} + "
                     f"{r['workers_cpu_ms_per_request']}) | {r['client_cpu_ms_per_request']} |")
    s, f, b, c = res["swap"], res["floor"], res["binary_at_cores"], res["cpu_count"]
    at = next(r for r in res["levels"] if r["concurrency"] == c)
    lines += ["", f"Bare runner, {c} threads of single-sample calls: {res['bare_rps']} req/s "
              f"(before/after: {res['bare_rps_runs']}), {res['bare_cpu_ms_per_call']} ms CPU "
              f"per call. Server at concurrency {c}: {res['server_rps_at_cores']} req/s = "
              f"**{res['ratio_vs_bare']:.1%}** of bare with JSON answers; "
              f"{b['throughput_rps']} req/s = **{res['binary_ratio_vs_bare']:.1%}** with "
              f"`Accept: application/octet-stream` (the output tensor, no top-k or JSON; p50 "
              f"{b['p50_ms']} ms, server CPU {b['server_cpu_ms_per_request']} ms/req).", "",
              f"Where the time goes at concurrency {c} (CPU per request): client "
              f"{at['client_cpu_ms_per_request']} ms; server {at['server_cpu_ms_per_request']} ms, "
              f"of which the event loop thread {at['loop_cpu_ms_per_request']} ms (HTTP, decode, "
              f"top-k, JSON, metrics, hand-off; the no-op server's whole CPU is "
              f"{f['server_cpu_ms_per_request']} ms) and the inference workers "
              f"{at['workers_cpu_ms_per_request']} ms (the bare call costs "
              f"{res['bare_cpu_ms_per_call']} ms; the rest is the runner's Python around it, "
              f"waiting for the GIL and waking threads). The HTTP floor — the same client "
              f"against a server that does nothing — is {f['throughput_rps']} req/s at "
              f"concurrency {c} (p50 {f['p50_ms']} ms per round trip); in a closed loop a "
              f"request's round trip and its inference add up, so at concurrency {c} no server "
              f"on this stack exceeds about c / (floor p50 + bare latency) = "
              f"{res['closed_loop_bound_rps']} req/s = {res['closed_loop_bound_ratio']:.0%} of "
              f"bare. And the event loop is one thread needing "
              f"{at['loop_cpu_ms_per_request']} ms of CPU per request, so {res['workers']} server "
              f"process(es) answer at most ~{res['loop_bound_rps']} req/s however many cores "
              f"there are "
              f"({res['loop_bound_rps'] / res['bare_rps']:.0%} of bare in this run; the bare "
              f"runner is faster on a quiet machine, this bound is not). First concurrency "
              f"at >= 85% of bare: {res['first_concurrency_at_85'] or 'none'}.",
              "",
              f"Server RSS: {res['rss_before_mb']:.1f} MB before, {res['rss_after_mb']:.1f} MB after "
              f"(**{res['rss_growth']:+.1%}**).",
              f"Swap under load (concurrency {s['concurrency']}, {s['requests']} requests): swap "
              f"{s.get('swap_status')}, **{s['errors']} failed**, {s['rejected_503']} 503, "
              f"p99 {s['p99_ms']} ms; transport errors {s['transport_errors'] or 'none'}.", "",
              "Goals:"]
    lines += [f"- {k}: {'PASS' if v else 'FAIL'}" for k, v in res["goals"].items()]
    return "\n".join(lines) + "\n"


def make_model(folder: Path) -> Path:
    """A heavier INT8 ONNX: a random-init SmallResNet (width 64) on digits at 64x64."""
    import torch

    from edgecompress.models import small_resnet

    torch.manual_seed(0)
    data = ec.data.digits(image_size=64, batch_size=32, seed=0)
    model = small_resnet(in_channels=1, num_classes=10, width=64).eval()
    dm = ec.Pipeline([ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=64)],
                     measure=False).run(model, data)
    return dm.export("onnx", folder / "resnet64_int8.onnx", benchmark_runs=0,
                     accuracy_samples=32).path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, nargs="?")
    ap.add_argument("--make-model", type=Path, default=None,
                    help="write a heavier INT8 ONNX into this folder and serve it")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", default="1,2,4,16,64")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--infer-threads", type=int, default=os.cpu_count() or 1,
                    help="inference threads per process (0: on the event loop)")
    ap.add_argument("--loop", default="auto", help="uvicorn event loop: auto, asyncio, uvloop")
    ap.add_argument("--http", default="auto", help="uvicorn HTTP parser: auto, h11, httptools")
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1, help="runtime threads per call")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="serve_load")
    args = ap.parse_args()
    if args.make_model:
        args.artifact = make_model(args.make_model)
    if args.artifact is None:
        ap.error("give an artifact or --make-model DIR")
    return args


def run_levels(args: argparse.Namespace, x: np.ndarray, request: bytes, tmp: Path) -> dict:
    """Every load level, the bare runner and the floor around concurrency=cores, the swap."""
    cores = os.cpu_count() or 1
    token = "bench-token-" + os.urandom(12).hex()
    token_file = tmp / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.artifact, port, server_options(args), tmp / "state", token_file)
    out: dict = {"levels": [], "bare": []}
    body = request.split(b"\r\n\r\n", 1)[1]
    binary = http_request("/predict", body, {**_headers(x), "Accept": "application/octet-stream"})
    try:
        for c in (cores, min(16, bound(args))):  # warm up, batch shapes too
            run_load(port, request, 500, c)
        import httpx

        answer = len(httpx.post(url + "/predict", content=body, headers=_headers(x)).content)
        out["rss_before_mb"] = rss_mb(proc.pid)
        for c in [int(v) for v in args.concurrency.split(",")]:
            if c == cores:
                out["bare"].append(bare_throughput(args.artifact, x, args.requests, cores,
                                                   args.threads))
            out["levels"].append(measured_level(proc, url, port, request, args.requests, c))
            if c == cores:  # the same requests asking for the output tensor instead of JSON
                out["binary"] = measured_level(proc, url, port, binary, args.requests, c)
                out["floor"] = floor_level(request, args.requests, cores, answer)
                out["bare"].append(bare_throughput(args.artifact, x, args.requests, cores,
                                                   args.threads))
            print(out["levels"][-1], flush=True)
        out["rss_after_mb"] = rss_mb(proc.pid)
        swap_c = max(c["concurrency"] for c in out["levels"]
                     if c["concurrency"] <= bound(args))
        out["swap"] = swap_under_load(url, port, args.artifact, token, request, args.requests,
                                      swap_c)
        print("swap:", out["swap"], flush=True)
        out["alive"] = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def bound(args: argparse.Namespace) -> int:
    """Requests admitted at once before 503s: per process, inference threads + queue."""
    return args.workers * (max(1, args.infer_threads) + args.queue)


def _headers(x: np.ndarray) -> dict[str, str]:
    return {"Content-Type": "application/octet-stream", "X-Shape": ",".join(map(str, x.shape))}


def summarise(args: argparse.Namespace, run: dict, load_before: list[float]) -> dict:
    cores = os.cpu_count() or 1
    results, bare, floor = run["levels"], run["bare"], run["floor"]
    limit = bound(args)
    at_cores = next(r for r in results if r["concurrency"] == cores)
    bare_rps = float(np.mean([b[0] for b in bare]))
    bare_cpu = float(np.mean([b[1] for b in bare]))
    server_rps = at_cores["throughput_rps"]
    # closed loop: each connection's round trip (floor) and its inference (bare latency) add up
    bare_latency_ms = 1000 * cores / bare_rps
    closed_bound = cores * 1000 / (floor["p50_ms"] + bare_latency_ms)
    res = {"artifact": str(args.artifact), "command": " ".join(["python", *sys.argv]),
           "cpu_count": cores, "workers": args.workers, "infer_threads": args.infer_threads,
           "loop": args.loop, "http": args.http, "queue": args.queue, "bound": limit,
           "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
           "threads": args.threads, "load_before": load_before,
           "load_after": [round(v, 2) for v in os.getloadavg()], "levels": results,
           "bare_rps": round(bare_rps, 1), "bare_rps_runs": [round(b[0], 1) for b in bare],
           "bare_cpu_ms_per_call": round(bare_cpu, 3), "floor": floor,
           "closed_loop_bound_rps": round(closed_bound, 1),
           "loop_bound_rps": round(args.workers * 1000 /
                                   max(1e-6, at_cores["loop_cpu_ms_per_request"]), 1),
           "closed_loop_bound_ratio": closed_bound / bare_rps,
           "first_concurrency_at_85": next((r["concurrency"] for r in results
                                            if r["throughput_rps"] >= 0.85 * bare_rps), None),
           "server_rps_at_cores": server_rps, "ratio_vs_bare": server_rps / bare_rps,
           "binary_at_cores": run["binary"],
           "binary_ratio_vs_bare": run["binary"]["throughput_rps"] / bare_rps,
           "rss_before_mb": run["rss_before_mb"], "rss_after_mb": run["rss_after_mb"],
           "rss_growth": run["rss_after_mb"] / run["rss_before_mb"] - 1, "swap": run["swap"],
           "server_alive": run["alive"]}
    swap = run["swap"]
    res["goals"] = {
        "0 errors below the queue bound": all(r["errors"] == 0 and r["rejected_503"] == 0
                                              for r in results if r["concurrency"] <= limit),
        "503 (never a crash) above it": run["alive"] and all(
            r["errors"] == 0 and r["rejected_503"] > 0 for r in results if r["concurrency"] > limit),
        "throughput >= 85% of bare runner at concurrency = cores (JSON answers)":
            res["ratio_vs_bare"] >= 0.85,
        "throughput >= 85% of bare runner at concurrency = cores (binary answers)":
            res["binary_ratio_vs_bare"] >= 0.85,
        "RSS growth < 5%": res["rss_growth"] < 0.05,
        "0 failed requests during a swap under load": swap["errors"] == 0
        and swap["rejected_503"] == 0 and swap.get("swap_status") == 200,
    }
    return res


def main() -> None:
    args = parse_args()
    runner = ec.load(args.artifact)
    x = runner.sample_input(1)
    request = http_request("/predict", x.astype("<f4").tobytes(), _headers(x))
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        run = run_levels(args, x, request, Path(tmp))
    res = summarise(args, run, load_before)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
