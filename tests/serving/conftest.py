"""Fixtures for the service: a trained tiny model on disk, an in-process client, and a real
MLflow registry with two versions for the end-to-end tests."""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from forecast.bundle import load_bundle
from forecast.config import build_config
from forecast.predictor import Forecaster
from forecast.runner import train_and_evaluate
from forecast.tracking import train_tracked
from serving.app import create_app
from serving.settings import Settings

# Synthetic demo data (5 channels load_0..load_4, hourly), a model that trains in seconds.
RAW: dict[str, Any] = {
    "name": "svc",
    "windows": {"lookback": 48, "horizon": 12},
    "model": {"patch_len": 12, "patch_stride": 6, "d_model": 8, "n_heads": 2, "n_layers": 1,
              "d_ff": 16, "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 64, "max_windows_per_epoch": 512, "num_threads": 1,
              "progress": False, "pad_augment": 0.2},
    "eval": {"linear_max_windows": 500},
    "tracking": {"enabled": False},
}
MODEL_NAME = "svc-model"


def tiny_config(out: Path, **sections: dict[str, Any]):
    raw = copy.deepcopy(RAW)
    raw["output_dir"] = str(out)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return build_config(raw, "serving test")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("svc")
    return train_and_evaluate(tiny_config(out)).model_dir


@pytest.fixture(scope="session")
def forecaster(model_dir: Path) -> Forecaster:
    return Forecaster(load_bundle(model_dir))


def wait_ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture
def make_client(model_dir: Path) -> Iterator[Any]:
    """make_client(**settings) -> a ready TestClient on the tiny model."""
    opened: list[TestClient] = []

    def make(wait: bool = True, **overrides: Any) -> TestClient:
        settings = Settings(**{"model_uri": str(model_dir), **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        opened.append(client)
        if wait:
            wait_ready(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Any) -> TestClient:
    return make_client()


@dataclass
class Registry:
    uri: str
    root: Path
    client: MlflowClient


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A SQLite store holding svc-model v1 and v2 (another seed and learning rate); the tests
    set the champion alias themselves."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracked = {"enabled": True, "experiment": "svc", "registered_model": MODEL_NAME}
    train_tracked(tiny_config(root / "a", tracking=tracked), uri)
    train_tracked(tiny_config(root / "b", tracking=tracked,
                              train={"lr": 1e-7, "seed": 1}), uri)
    return Registry(uri, root, MlflowClient(tracking_uri=uri, registry_uri=uri))


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
