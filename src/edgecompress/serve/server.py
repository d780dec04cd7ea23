"""Run the app with uvicorn, one process (see :class:`~edgecompress.serve.config.ServeConfig`
for why ``workers`` are threads, not processes)."""

from __future__ import annotations

import logging

from .._extras import require
from .config import ServeConfig

log = logging.getLogger("edgecompress")


def run(config: ServeConfig) -> None:
    """Load and verify the model, then serve until interrupted."""
    uvicorn = require("uvicorn", "serve", "edgecompress serve")
    from .app import create_app

    app = create_app(config)
    log.info("serving %s on http://%s:%d (%d workers, queue %d, batches up to %d, swap %s)",
             config.artifact, config.host, config.port, config.workers, config.queue,
             config.max_batch,
             "enabled" if config.token else "disabled")
    # uvicorn's own limit keeps idle connections from piling up on a small device; a short
    # keep-alive timeout races busy clients (the server closes a connection as a request
    # arrives on it, and that request fails), so it is longer than any stall under load
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                limit_concurrency=max(64, 4 * (config.workers + config.queue)),
                timeout_keep_alive=30, access_log=False)
