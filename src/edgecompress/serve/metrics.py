"""Prometheus metrics of one server (its own registry, so several apps in one process — tests,
the load benchmark — never share counters)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Requests, errors, latency, queue length, temperature and the served version."""

    def __init__(self, queue_length: Callable[[], float], in_flight: Callable[[], float],
                 temperature: Callable[[], float | None], version: Callable[[], float]):
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
        Gauge("edgecompress_queue_length", "Requests waiting for a worker",
              registry=r).set_function(queue_length)
        Gauge("edgecompress_in_flight", "Requests admitted and not finished",
              registry=r).set_function(in_flight)
        Gauge("edgecompress_temperature_celsius", "Last temperature the watchdog read (NaN: none)",
              registry=r).set_function(lambda: _nan(temperature()))
        Gauge("edgecompress_model_version", "Version number of the model being served",
              registry=r).set_function(version)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
