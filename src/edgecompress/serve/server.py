"""Run the app with uvicorn: one process (``workers`` = 1), or a supervisor and ``workers``
processes behind one port, each with its own copy of the model (see
:mod:`~edgecompress.serve.supervisor`, :mod:`~edgecompress.serve.workers` and
:mod:`~edgecompress.serve.shared`)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket

from .._extras import require
from .config import ServeConfig, uvicorn_options

log = logging.getLogger("edgecompress")


def run(config: ServeConfig) -> None:
    """Load and verify the model, then serve until interrupted."""
    uvicorn = require("uvicorn", "serve", "edgecompress serve")
    log.info("serving %s on http://%s:%d (%d worker process(es), %d inference threads and "
             "queue %d each, batches up to %d, swap %s)", config.artifact, config.host,
             config.port, config.workers, config.infer_threads, config.queue, config.max_batch,
             "enabled" if config.token else "disabled")
    if config.workers == 1:
        from .app import create_app

        uvicorn.run(create_app(config), **uvicorn_options(config))
        return
    _run_workers(config)


def _run_workers(config: ServeConfig) -> None:
    """The supervisor: verify once and publish, bind the port, start the workers, then deal
    them the connections until interrupted (Ctrl-C or SIGTERM)."""
    from .metrics import MULTIPROC_ENV
    from .supervisor import Supervisor
    from .workers import WorkerPool

    supervisor = Supervisor(config)  # verifies once and publishes, before any worker starts
    listener = socket.create_server((config.host, config.port), backlog=2048)
    pool = None
    # the watchdog and its temperature source stay here; prometheus_client's multiprocess
    # folder reaches the workers before they import it
    worker = dataclasses.replace(config, thermal=None, temperature_source=None)
    previous = signal.signal(signal.SIGTERM, lambda *_: pool and pool.stop_soon())
    try:
        pool = WorkerPool(config.workers, worker.to_json(),
                          {MULTIPROC_ENV: str(supervisor.metrics_dir.resolve())})
        pool.wait_ready()
        supervisor.start()
        pool.serve(listener)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()
        if pool is not None:
            pool.stop()
        supervisor.stop()
