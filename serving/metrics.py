"""Prometheus metrics, in a registry owned by one app (no process-global state).

With several uvicorn workers each is a process of its own, and a scrape reaches one of them:
`forecast serve --workers N` then runs prometheus_client's multiprocess mode, in which every
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR and /metrics sums them all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from forecast.errors import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path:
    """The folder the workers' metric files go to, from $PROMETHEUS_MULTIPROC_DIR or a new
    temporary one, emptied and exported so that every worker started after this uses it.
    Emptied: files a previous run's workers left would be summed into this run's counts."""
    given = os.environ.get(MULTIPROC_DIR)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="forecast-metrics-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    except OSError as err:
        raise ConfigError(f"{MULTIPROC_DIR} {str(folder)!r}: {err.strerror or err}; point it "
                          "at a folder the service can write, or unset it") from None
    os.environ[MULTIPROC_DIR] = str(folder)
    return folder


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus_client picks file-backed values at import when the folder is set
        self.multiprocess = values.ValueClass is not values.MutexValue
        self.requests = Counter("forecast_http_requests", "HTTP requests by route and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("forecast_http_request_seconds", "Request latency",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.series = Counter("forecast_series", "Series forecast", registry=self.registry)
        # per worker (a pid label) in multiprocess mode: workers swap versions independently
        self.model_version = Gauge("forecast_model_version_info",
                                   "1 for the model version being served",
                                   ["name", "version"], registry=self.registry,
                                   multiprocess_mode="liveall")
        self.reload_failures = Counter("forecast_model_reload_failures",
                                       "Failed attempts to load a new model version",
                                       registry=self.registry)
        self._served: set[tuple[str, str]] = set()

    def serving(self, name: str, version: str) -> None:
        if self.multiprocess:  # a value once written stays in the worker's file: zero it
            for old in self._served - {(name, version)}:
                self.model_version.labels(*old).set(0)
        else:
            self.model_version.clear()
        self._served.add((name, version))
        self.model_version.labels(name=name, version=version).set(1)

    def scrape_registry(self) -> CollectorRegistry:
        """What /metrics exposes: this app's registry, or every worker's files summed."""
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry

    def close(self) -> None:
        """A worker stopping: its live gauges leave the sums (its counts stay)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
