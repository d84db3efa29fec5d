"""Prometheus metrics, in a registry owned by one app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("forecast_http_requests", "HTTP requests by route and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("forecast_http_request_seconds", "Request latency",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.series = Counter("forecast_series", "Series forecast", registry=self.registry)
        self.model_version = Gauge("forecast_model_version_info",
                                   "1 for the model version being served",
                                   ["name", "version"], registry=self.registry)
        self.reload_failures = Counter("forecast_model_reload_failures",
                                       "Failed attempts to load a new model version",
                                       registry=self.registry)

    def serving(self, name: str, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(name=name, version=version).set(1)
