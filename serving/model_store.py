"""The model the service answers with, and its hot swap.

`ModelStore.current` is replaced in one assignment; a request takes the reference once and
keeps it, so a request in flight during a swap finishes on the model it started with.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from forecast.bundle import load_bundle
from forecast.packaging import bundle_path
from forecast.predictor import Forecaster
from forecast.tracking import default_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a registry alias, a fixed version, or a local directory."""

    uri: str
    name: str
    alias: str | None = None
    version: str | None = None

    @staticmethod
    def parse(uri: str) -> ModelSource:
        if not uri.startswith("models:/"):
            return ModelSource(uri, Path(uri).name or uri, version="local")
        rest = uri.removeprefix("models:/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return ModelSource(uri, name, alias=alias)
        name, _, version = rest.partition("/")
        if not version:
            raise ValueError(f"model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
        return ModelSource(uri, name, version=version)


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

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve_version(self) -> tuple[str, str | None]:
        """The registry version the source points to now, and its run id."""
        src = self.source
        if src.version == "local":
            return "local", None
        client = self._client()
        if src.alias is not None:
            mv = client.get_model_version_by_alias(src.name, src.alias)
        else:
            mv = client.get_model_version(src.name, src.version)
        return str(mv.version), mv.run_id

    def load(self, version: str, run_id: str | None) -> LoadedModel:
        """Load and warm one version (blocking: call it off the event loop)."""
        src = self.source
        if version == "local":
            forecaster = Forecaster(load_bundle(src.uri))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{src.name}/{version}", dst_path=tmp,
                    tracking_uri=self.tracking_uri)
                forecaster = Forecaster(load_bundle(bundle_path(local)))
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
