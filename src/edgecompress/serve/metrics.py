"""Prometheus metrics of one server (its own registry, so several apps in one process — tests,
the load benchmark — never share counters).

With several worker processes, prometheus_client's multiprocess mode keeps every counter and
histogram in per-process files under one folder (``PROMETHEUS_MULTIPROC_DIR``, set by the
supervisor before any worker imports prometheus_client), and ``/metrics`` on any worker adds
them up. Gauges are then set as values change (in-flight and queue summed over the live
processes; version and temperature the highest any live process reports) instead of read on
demand, which multiprocess mode cannot do.
"""

from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Requests, errors, latency, queue length, temperature and the served version.

    ``shared``: this is one of several worker processes (multiprocess mode, see above)."""

    def __init__(self, queue_length: Callable[[], float], in_flight: Callable[[], float],
                 temperature: Callable[[], float | None], version: Callable[[], float],
                 shared: bool = False):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgecompress_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("edgecompress_errors", "Requests that failed (4xx/5xx) by reason",
                              ["endpoint", "reason"], registry=r)
        self.latency = Histogram("edgecompress_inference_seconds", "Model run time per /predict",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.request_latency = Histogram("edgecompress_request_seconds",
                                         "Whole /predict time (decode, queue, run, encode)",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("edgecompress_batch_rows",
                                    "Rows in the runner call that served each /predict "
                                    "(above 1: stacked with other requests)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.shared_dir = os.environ.get(MULTIPROC_ENV) if shared else None
        gauges = [("edgecompress_queue_length", "Requests waiting for a worker", queue_length,
                   "livesum"),
                  ("edgecompress_in_flight", "Requests admitted and not finished", in_flight,
                   "livesum"),
                  ("edgecompress_temperature_celsius", "Last temperature the watchdog read "
                   "(NaN: none)", lambda: _nan(temperature()), "livemax"),
                  ("edgecompress_model_version", "Version number of the model being served",
                   version, "livemax")]
        self.gauges: dict[str, Gauge] = {}
        for name, doc, read, mode in gauges:
            gauge = Gauge(name, doc, registry=r, multiprocess_mode=mode)
            if self.shared_dir is None:
                gauge.set_function(read)
            self.gauges[name.removeprefix("edgecompress_")] = gauge

    def set_admission(self, in_flight: int, waiting: int) -> None:
        """This process's in-flight and queue counts (several workers: summed by /metrics)."""
        self.gauges["in_flight"].set(in_flight)
        self.gauges["queue_length"].set(waiting)

    def set_view(self, version: int, temperature: float | None) -> None:
        """The served version and the last temperature (several workers)."""
        self.gauges["model_version"].set(version)
        self.gauges["temperature_celsius"].set(_nan(temperature))

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
