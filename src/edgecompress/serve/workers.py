"""Several server processes behind one port, with the connections dealt out evenly.

Letting every worker accept from one shared socket (uvicorn's ``--workers``) or from its own
``SO_REUSEPORT`` socket leaves the spread to chance: the event loops accept every pending
connection at once, and the kernel hashes ports to sockets, so two keep-alive clients often
both land on one process while the other idles (measured here: every one of three runs at
concurrency 2 put both connections on the same worker). The supervisor therefore accepts
each connection itself and hands its file descriptor to the next worker in turn over a Unix
socket (``SCM_RIGHTS``), as Node's cluster module does; the worker's uvicorn serves it as if
it had accepted it. That is one hand-off per connection, none per request.

Each worker is a spawned interpreter (never a fork of a process holding runtime threads); a
worker that dies is replaced, and the replacement loads the version published then.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger("edgecompress")


class _HandedServer:
    """Makes a ``uvicorn.Server`` serve connections handed over ``channel`` instead of
    accepting them itself (it reuses uvicorn's HTTP protocol, lifespan and shutdown)."""

    @staticmethod
    def build(config: Any, channel: socket.socket) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await self.lifespan.startup()
                if self.lifespan.should_exit:
                    sys.exit(3)
                loop = asyncio.get_running_loop()

                def protocol() -> asyncio.Protocol:  # what uvicorn's own startup builds
                    return self.config.http_protocol_class(
                        config=self.config, server_state=self.server_state,
                        app_state=self.lifespan.state, _loop=loop)

                self.servers = []
                channel.setblocking(False)
                loop.add_reader(channel.fileno(), self._take, loop, protocol)
                self.started = True

            def _take(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, 64, 32)
                except BlockingIOError:
                    return
                if not data:  # the supervisor is gone: finish what is open, then stop
                    loop.remove_reader(channel.fileno())
                    self.should_exit = True
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    loop.create_task(loop.connect_accepted_socket(protocol, conn))

        return Server(config)


def worker_main(config_json: str, channel: socket.socket, env: dict[str, str]) -> None:
    """One worker process: build the app from the shared view, serve handed connections."""
    os.environ.update(env)  # before anything imports prometheus_client
    import uvicorn

    from .app import create_app
    from .config import ServeConfig, uvicorn_options
    from .state import build_state

    logging.basicConfig(level=logging.WARNING)
    config = ServeConfig.from_json(config_json)
    app = create_app(config, build_state(config, worker=True))
    options = {k: v for k, v in uvicorn_options(config).items() if k not in ("host", "port")}
    server = _HandedServer.build(uvicorn.Config(app, lifespan="on", **options), channel)
    server.run()


class WorkerPool:
    """``n`` worker processes, each fed the connections the listening socket accepts in turn."""

    def __init__(self, n: int, config_json: str, env: dict[str, str]):
        self.n, self.config_json, self.env = n, config_json, env
        self._ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = [None] * n
        self.channels: list[socket.socket | None] = [None] * n
        self._stop = threading.Event()
        for i in range(n):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = self._ctx.Process(target=worker_main, args=(self.config_json, theirs, self.env),
                                 name=f"edgecompress-serve-worker-{i}", daemon=True)
        proc.start()
        theirs.close()
        old = self.channels[i]
        self.procs[i], self.channels[i] = proc, ours
        if old is not None:
            old.close()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every worker has loaded its model (each answers on its channel's socket)."""
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(self.procs):
            while not self._ready(i):
                if not proc.is_alive():
                    raise RuntimeError(f"server worker {i} exited with code {proc.exitcode} "
                                       f"while loading the model (see its log above)")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server worker {i} did not start in {timeout_s:.0f} s")
                time.sleep(0.1)

    def _ready(self, i: int) -> bool:
        # a worker builds its app before it reads its channel; a health request handed to it
        # is answered only once it serves
        a, b = socket.socketpair()
        try:
            socket.send_fds(self.channels[i], [b"c"], [b.fileno()])
        except OSError:
            return False
        finally:
            b.close()
        a.settimeout(2.0)
        try:
            a.sendall(b"GET /health HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
            return a.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        finally:
            a.close()

    def serve(self, listener: socket.socket) -> None:
        """Accept on ``listener`` and deal the connections out until :meth:`stop`."""
        listener.settimeout(0.5)
        turn = 0
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, InterruptedError):
                self._replace_dead()
                continue
            with conn:
                for _ in range(self.n):  # skip a worker that just died
                    i, turn = turn % self.n, turn + 1
                    try:
                        socket.send_fds(self.channels[i], [b"c"], [conn.fileno()])
                        break
                    except OSError:
                        continue
            if not all(p.is_alive() for p in self.procs):
                self._replace_dead()

    def _replace_dead(self) -> None:
        for i, proc in enumerate(self.procs):
            if not proc.is_alive() and not self._stop.is_set():
                log.warning("server worker %d (pid %s) exited with code %s; starting another",
                            i, proc.pid, proc.exitcode)
                self._forget_metrics(proc.pid)
                self._spawn(i)

    def _forget_metrics(self, pid: int) -> None:
        """Drop a dead worker's live gauges (in flight, queue), or they would count forever."""
        folder = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, folder)

    def stop_soon(self) -> None:
        """Stop accepting (from a signal handler); :meth:`serve` returns within half a second."""
        self._stop.set()

    def stop(self) -> None:
        """Ask every worker to finish its open requests and stop; wait for them."""
        self._stop.set()
        for proc in self.procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, channel in zip(self.procs, self.channels):
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
            if channel is not None:
                channel.close()
