"""The model the service answers with, and its hot swap.

`ModelStore.current` is replaced in one assignment; a request takes the reference once and
keeps it, so a request in flight during a swap finishes on the model it started with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from forecast.predictor import Forecaster
from forecast.registry import ModelSource, load_source_version, resolve_version
from forecast.tracking import default_uri

__all__ = ["LoadedModel", "ModelSource", "ModelStore", "warm_up"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    forecaster: Forecaster
    name: str
    version: str
    alias: str | None
    run_id: str | None
    source: str
    loaded_at: float = field(default_factory=time.time)


@dataclass
class ModelStore:
    source: ModelSource
    tracking_uri: str
    current: LoadedModel | None = None
    last_error: str | None = None
    reload_failures: int = 0
    swaps: int = 0

    @staticmethod
    def create(model_uri: str, tracking_uri: str | None) -> ModelStore:
        return ModelStore(ModelSource.parse(model_uri), default_uri(tracking_uri))

    def resolve_version(self) -> tuple[str, str | None]:
        """The registry version the source points to now, and its run id."""
        return resolve_version(self.source, self.tracking_uri)

    def load(self, version: str, run_id: str | None) -> LoadedModel:
        """Load and warm one version (blocking: call it off the event loop)."""
        src = self.source
        forecaster = load_source_version(src, self.tracking_uri, version)
        warm_up(forecaster)
        return LoadedModel(forecaster, src.name, version, src.alias, run_id, src.uri)

    def refresh(self) -> bool:
        """Load the version the source points to if it is not the one serving. True if swapped.

        A failure leaves the current model serving and is kept in `last_error`.
        """
        try:
            version, run_id = self.resolve_version()
            if self.current is not None and self.current.version == version:
                return False
            loaded = self.load(version, run_id)
        except Exception as err:  # any failure to resolve or load must not stop serving
            self.reload_failures += 1
            self.last_error = f"loading {self.source.uri} failed: {type(err).__name__}: {err}"
            log.error(self.last_error)
            return False
        previous = self.current
        self.current = loaded  # the swap: one reference assignment
        self.last_error = None
        self.swaps += 1
        log.info("serving %s v%s%s", loaded.name, loaded.version,
                 f" (was v{previous.version})" if previous else "")
        return True


def warm_up(forecaster: Forecaster) -> None:
    """One forward pass at full and at minimum history, so the first request is not slow."""
    C = len(forecaster.channels)
    histories = [np.zeros((forecaster.lookback, C), np.float32),
                 np.zeros((forecaster.meta.min_history, C), np.float32)]
    forecaster.predict_arrays(histories)
