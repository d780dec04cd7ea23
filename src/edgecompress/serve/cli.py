"""Arguments and handlers of ``edgecompress serve`` and ``edgecompress events`` (registered
by :mod:`edgecompress.cli`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_STATE = "edgecompress-serve"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help="the artifact to serve (.onnx, .tflite, ncnn folder…)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: the network)")
    p.add_argument("--port", type=int, default=8080)
    add_process_arguments(p)
    p.add_argument("--token-file", default=None,
                   help="file holding the token for POST /model (else EDGECOMPRESS_SERVE_TOKEN; "
                        "neither: swapping over HTTP is disabled)")
    p.add_argument("--watch", type=Path, default=None,
                   help="folder to watch: an artifact copied there is verified and swapped in")
    p.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE),
                   help="where versions and the event log live")
    p.add_argument("--keep", type=int, default=3, help="versions kept on disk")
    p.add_argument("--fallback", type=Path, default=None,
                   help="a lighter artifact served while the device is too hot")
    p.add_argument("--hot", type=float, default=None,
                   help="°C above which the thermal policy acts (omit: no watchdog)")
    p.add_argument("--cool", type=float, default=None, help="°C below which it goes back "
                                                            "(default: hot - 10)")
    p.add_argument("--thermal-action", choices=("throttle", "fallback"), default=None,
                   help="default: fallback when --fallback is given, else throttle")
    p.add_argument("--max-rps", type=float, default=5.0, help="request rate while throttled")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest /predict body")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="refuse a swapped-in model whose measured p50 is slower")


def add_process_arguments(p: argparse.ArgumentParser) -> None:
    """How requests are run: processes, threads, queue, batching, event loop."""
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own copy of the "
                        "model; swaps, the thermal state, metrics and events stay one view "
                        "(through --state-dir). More than one lifts the ceiling one event "
                        "loop puts on a fast model's requests/s")
    p.add_argument("--infer-threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="inference threads of each server process (0: run the model on the "
                        "event loop, no hand-off or batching: for a model faster than the "
                        "hand-off, with --workers = cores)")
    p.add_argument("--queue", type=int, default=16,
                   help="requests that may wait in each process; more get 503 + Retry-After")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests waiting for a worker are stacked into one runner call of at "
                        "most this many rows (models with a dynamic batch dimension; 1: never)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="a worker holding a partial batch waits this long for more (0: runs "
                        "what is queued at once; more: larger batches, higher latency)")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads per call (default: the runtime's own; with several "
                        "--workers, the cores divided among them)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (auto: uvloop when installed; the serve extra does not "
                        "bring it)")
    p.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                   help="HTTP parser (auto: httptools when installed; the serve extra does "
                        "not bring it)")


def serve_from_args(args: argparse.Namespace) -> int:
    from .config import ServeConfig, read_token
    from .server import run
    from .watchdog import ThermalPolicy

    thermal = None
    if args.hot is not None:
        action = args.thermal_action or ("fallback" if args.fallback else "throttle")
        thermal = ThermalPolicy(hot_c=args.hot, cool_c=args.cool if args.cool is not None
                                else args.hot - 10, action=action, max_rps=args.max_rps)
    config = ServeConfig(args.artifact, host=args.host, port=args.port, workers=args.workers,
                         infer_threads=args.infer_threads, queue=args.queue, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, threads=args.threads, token=read_token(args.token_file),
                         max_body_mb=args.max_body_mb, state_dir=args.state_dir, keep=args.keep,
                         watch=args.watch, fallback=args.fallback, thermal=thermal,
                         max_latency_ms=args.max_latency_ms, loop=args.loop, http=args.http)
    run(config)
    return 0


def add_events_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE),
                   help="the server's --state-dir (its events.db is read)")
    p.add_argument("--kind", default=None,
                   help="only this kind: swap, rollback, thermal, fallback, stats, start, stop")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")


def events_from_args(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .events import EventLog, format_events

    db = args.state_dir / "events.db"
    if not db.exists():
        raise ConfigError(f"no event log at {db}; pass the --state-dir the server ran with")
    log = EventLog(db)
    try:
        rows = log.query(kind=args.kind, limit=args.limit)
    finally:
        log.close()
    print(json.dumps(rows, indent=2) if args.json else (format_events(rows) or "(no events)"))
    return 0
