"""A load client that costs little CPU, and a no-op server that measures the HTTP floor.

The client keeps ``concurrency`` keep-alive connections, each sending one pre-built request and
reading the answer (status line, Content-Length, body) before the next — a closed loop, as a
camera or a service calling the device would. Nothing is parsed beyond that, so on a 2-core
machine the client takes ~0.1 ms of CPU per request where httpx took ~1 ms, and the cores stay
with the server being measured. uvloop is used when installed (the server uses it too).

``python benchmarks/http_load.py --floor-server PORT`` serves a no-op ASGI app on uvicorn (read
the body, answer a fixed JSON of the size /predict answers): the same client against it gives
the round trip no server on this stack can beat, the floor under every /predict number.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 POST as bytes (built once, sent many times)."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    concurrency: int
    requests: int
    codes: dict[int, int] = field(default_factory=dict)
    transport_errors: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    def summary(self) -> dict:
        ms = np.asarray(self.latencies_s) * 1000 if self.latencies_s else np.asarray([np.nan])
        ok = self.codes.get(200, 0)
        errors = sum(n for c, n in self.codes.items() if c not in (200, 503))
        return {"concurrency": self.concurrency, "requests": self.requests, "ok": ok,
                "rejected_503": self.codes.get(503, 0),
                "errors": errors + sum(self.transport_errors.values()),
                "codes": {str(k): v for k, v in sorted(self.codes.items())},
                "transport_errors": self.transport_errors,
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
                "throughput_rps": round(ok / self.wall_s, 1) if self.wall_s else 0.0,
                "wall_s": round(self.wall_s, 2),
                "client_cpu_ms_per_request": round(1000 * self.client_cpu_s /
                                                   max(1, self.requests), 3)}


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bool]:
    """Send ``request``, read the whole answer; (status, server asked to close)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    length = int(head[start + 17:head.index(b"\r\n", start + 2)]) if start >= 0 else 0
    if length:
        await reader.readexactly(length)
    return status, b"\r\nconnection: close" in lower


async def _connection(host: str, port: int, request: bytes, res: LoadResult,
                      remaining: list[int]) -> None:
    conn = None
    while remaining[0] > 0:
        remaining[0] -= 1
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
            status, close = await _exchange(*conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            name = type(exc).__name__
            res.transport_errors[name] = res.transport_errors.get(name, 0) + 1
            conn, close = _drop(conn), False
            continue
        res.codes[status] = res.codes.get(status, 0) + 1
        if status == 200:
            res.latencies_s.append(time.perf_counter() - t0)
        if close:
            conn = _drop(conn)
    _drop(conn)


def _drop(conn: tuple | None) -> None:
    if conn is not None:
        conn[1].close()
    return None


def run_load(port: int, request: bytes, total: int, concurrency: int,
             host: str = "127.0.0.1") -> LoadResult:
    """``total`` requests over ``concurrency`` connections; wall time and this process's CPU."""
    res = LoadResult(concurrency, total)
    remaining = [total]

    async def main() -> None:
        await asyncio.gather(*(_connection(host, port, request, res, remaining)
                               for _ in range(concurrency)))

    t0, c0 = time.perf_counter(), time.process_time()
    _event_loop_runner()(main())
    res.wall_s, res.client_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return res


def _event_loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


# -- the floor: a server that does nothing ------------------------------------------------------
def floor_app(answer_bytes: int = 400):
    """An ASGI app that reads the body and answers a fixed JSON of ``answer_bytes``."""
    body = b'{"outputs":"' + b"x" * max(0, answer_bytes - 15) + b'"}'
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor-server", type=int, required=True, metavar="PORT")
    ap.add_argument("--answer-bytes", type=int, default=400)
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(floor_app(args.answer_bytes), host="127.0.0.1", port=args.floor_server,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
