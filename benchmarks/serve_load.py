"""Bounded load on `edgecompress serve` over loopback, against the bare runner.

The server runs in its own process (`python -m edgecompress serve`); an asyncio httpx client
sends raw tensors to /predict at each concurrency. Reported per level: p50/p99 latency,
throughput, errors (503 counted apart), and the server's RSS before and after. Then a swap
(POST /model) while the client keeps the load on, counting failed requests. The bare runner's
throughput (the same artifact, the same number of threads calling it at once) is measured just
before and after the concurrency=cores level, in the same run, so the ratio shares the machine
load.

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
import asyncio
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (load-independent cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(artifact: Path, port: int, workers: int, queue: int, threads: int,
                 state: Path, token_file: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgecompress", "serve", str(artifact), "--port", str(port),
           "--workers", str(workers), "--queue", str(queue), "--threads", str(threads),
           "--state-dir", str(state), "--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
    raise RuntimeError("server did not start")


async def load(url: str, body: bytes, headers: dict, total: int, concurrency: int) -> dict:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    transport_errors = 0
    failures: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal sent, transport_errors
            while sent < total:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", content=body, headers=headers)
                except httpx.TransportError as exc:
                    transport_errors += 1
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    continue
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000 if lat else np.asarray([np.nan])
    return {"concurrency": concurrency, "requests": total, "ok": codes.get(200, 0),
            "rejected_503": codes.get(503, 0),
            "errors": sum(n for c, n in codes.items() if c not in (200, 503)) + transport_errors,
            "codes": {str(k): v for k, v in sorted(codes.items())}, "transport_errors": failures,
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "throughput_rps": round(codes.get(200, 0) / wall, 1), "wall_s": round(wall, 2)}


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


def swap_under_load(url: str, artifact: Path, token: str, body: bytes, headers: dict,
                    total: int, concurrency: int) -> dict:
    import httpx

    result: dict = {}

    def swap() -> None:
        time.sleep(1.0)
        with open(artifact, "rb") as fh:
            r = httpx.post(url + "/model", files={"artifact": (artifact.name, fh.read())},
                           headers={"authorization": f"Bearer {token}"}, timeout=120)
        result["swap_status"] = r.status_code
        result["swap_body"] = r.json().get("error") if r.status_code != 200 else "swapped"

    t = threading.Thread(target=swap)
    t.start()
    stats = asyncio.run(load(url, body, headers, total, concurrency))
    t.join()
    return {**stats, **result}


def markdown(res: dict) -> str:
    lines = [f"# serve_load: {res['artifact']}", "", f"`{res['command']}`", "",
             f"Machine: {res['cpu_count']} cores, load average before {res['load_before']} / "
             f"after {res['load_after']} (other helpers' jobs were running). Server: "
             f"{res['workers']} workers, queue {res['queue']}, {res['threads']} runtime thread(s) "
             f"per call; bound = workers + queue = {res['workers'] + res['queue']}.", "",
             "| concurrency | ok | 503 | errors | p50 ms | p99 ms | req/s | server CPU ms/req |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["levels"]:
        lines.append(f"| {r['concurrency']} | {r['ok']} | {r['rejected_503']} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | "
                     f"{r['server_cpu_ms_per_request']} |")
    s = res["swap"]
    lines += ["", f"Bare runner at concurrency {res['cpu_count']}: {res['bare_rps']} req/s "
              f"(before/after: {res['bare_rps_runs']}); server: {res['server_rps_at_cores']} req/s "
              f"= **{res['ratio_vs_bare']:.1%}** of bare. CPU per request: server "
              f"{res['levels'][0]['server_cpu_ms_per_request']} ms (HTTP parsing, FastAPI, "
              f"thread hand-off, JSON; the load client's own CPU comes on top) vs "
              f"{res['bare_cpu_ms_per_call']} ms per bare runner call.",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, nargs="?")
    ap.add_argument("--make-model", type=Path, default=None,
                    help="write a heavier INT8 ONNX into this folder and serve it")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="runtime threads per call")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="serve_load")
    args = ap.parse_args()
    if args.make_model:
        args.artifact = make_model(args.make_model)
    if args.artifact is None:
        ap.error("give an artifact or --make-model DIR")
    cores = os.cpu_count() or 1
    levels = [int(c) for c in args.concurrency.split(",")]
    runner = ec.load(args.artifact)
    x = runner.sample_input(1)
    body = x.astype("<f4").tobytes()
    headers = {"content-type": "application/octet-stream", "x-shape": ",".join(map(str, x.shape))}
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        token = "bench-token-" + os.urandom(12).hex()
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.artifact, port, args.workers, args.queue, args.threads,
                            Path(tmp) / "state", token_file)
        try:
            asyncio.run(load(url, body, headers, 300, 4))  # warm up
            rss_before = rss_mb(proc.pid)
            results, bare = [], []
            for c in levels:
                if c == cores:
                    bare.append(bare_throughput(args.artifact, x, args.requests, cores, args.threads))
                cpu0 = cpu_seconds(proc.pid)
                results.append(asyncio.run(load(url, body, headers, args.requests, c)))
                results[-1]["server_cpu_ms_per_request"] = round(
                    1000 * (cpu_seconds(proc.pid) - cpu0) / max(1, args.requests), 3)
                if c == cores:
                    bare.append(bare_throughput(args.artifact, x, args.requests, cores, args.threads))
                print(results[-1], flush=True)
            rss_after = rss_mb(proc.pid)
            swap_c = max(c for c in levels if c <= args.workers + args.queue)
            swap = swap_under_load(url, args.artifact, token, body, headers, args.requests, swap_c)
            print("swap:", swap, flush=True)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    bound = args.workers + args.queue
    at_cores = next((r for r in results if r["concurrency"] == cores), None)
    bare_rps = float(np.mean([b[0] for b in bare])) if bare else float("nan")
    bare_cpu = float(np.mean([b[1] for b in bare])) if bare else float("nan")
    server_rps = at_cores["throughput_rps"] if at_cores else float("nan")
    res = {"artifact": str(args.artifact), "command": " ".join(["python", *sys.argv]),
           "cpu_count": cores, "workers": args.workers, "queue": args.queue,
           "threads": args.threads, "load_before": load_before,
           "load_after": [round(v, 2) for v in os.getloadavg()], "levels": results,
           "bare_rps": round(bare_rps, 1), "bare_rps_runs": [round(b[0], 1) for b in bare],
           "bare_cpu_ms_per_call": round(bare_cpu, 3),
           "server_rps_at_cores": server_rps, "ratio_vs_bare": server_rps / bare_rps,
           "rss_before_mb": rss_before, "rss_after_mb": rss_after,
           "rss_growth": rss_after / rss_before - 1, "swap": swap, "server_alive": alive}
    res["goals"] = {
        "0 errors below the queue bound": all(r["errors"] == 0 and r["rejected_503"] == 0
                                              for r in results if r["concurrency"] <= bound),
        "503 (never a crash) above it": alive and all(
            r["errors"] == 0 and r["rejected_503"] > 0 for r in results if r["concurrency"] > bound),
        "throughput >= 85% of bare runner at concurrency = cores": res["ratio_vs_bare"] >= 0.85,
        "RSS growth < 5%": res["rss_growth"] < 0.05,
        "0 failed requests during a swap under load": swap["errors"] == 0 and swap["rejected_503"] == 0
        and swap.get("swap_status") == 200,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
