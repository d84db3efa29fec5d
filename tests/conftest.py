"""Shared fixtures: a small synthetic hourly series (as a frame and as a CSV file) and a tiny
configuration that trains in well under a second on a CPU."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from forecast.config import Config, DataConfig, build_config
from forecast.data import SeriesSet, frame_to_series
from forecast.windows import Prepared, prepare


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Each test starts from the same environment: a command run in-process can set variables
    (`forecast serve` hands its settings to uvicorn's workers as FORECAST_* variables), and a
    later test's subprocess would inherit them."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


# Small enough for every test that trains: 400 hourly rows → 280 train / 40 val / 80 test.
N_ROWS = 400
CHANNELS = ["a", "b"]

TINY: dict[str, Any] = {
    "name": "tiny",
    "split": {"by": "fractions", "train": 0.7, "val": 0.1, "test": 0.2},
    "windows": {"lookback": 24, "horizon": 6, "stride": 1},
    # the encoder alone, without the default's skip; a test that adds the skip gets the plain
    # least-squares fit without the level input unless it asks for them
    "model": {"patch_len": 8, "patch_stride": 4, "d_model": 8, "n_heads": 2, "n_layers": 1,
              "d_ff": 16, "dropout": 0.0, "linear_skip": False, "skip_fit": "gradient",
              "skip_level": False, "skip_huber_delta": None},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "patience": 0, "seed": 0,
              "num_threads": 1},
    "eval": {"linear_max_windows": 500},
    "tracking": {"enabled": False},
}

# The same tiny settings as `--set` arguments, for the CLI.
TINY_SETS = [
    "windows.lookback=24", "windows.horizon=6",
    "model.patch_len=8", "model.patch_stride=4", "model.d_model=8", "model.n_heads=2",
    "model.n_layers=1", "model.d_ff=16", "model.dropout=0.0", "model.linear_skip=false",
    "train.epochs=1", "train.batch_size=32", "train.num_threads=1",
    "eval.linear_max_windows=500", "tracking.enabled=false",
]


def make_frame(n: int = N_ROWS, channels: list[str] | None = None, seed: int = 0,
               start: str = "2024-01-01", freq: str = "h") -> pd.DataFrame:
    """Wide frame: `date` plus one daily-cycle channel with noise per name."""
    channels = channels or CHANNELS
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    cols: dict[str, Any] = {"date": pd.date_range(start, periods=n, freq=freq)}
    for c, name in enumerate(channels):
        cols[name] = (10.0 * (c + 1) + 3.0 * np.sin(2 * np.pi * t / 24 + c)
                      + 0.3 * rng.standard_normal(n))
    return pd.DataFrame(cols)


@pytest.fixture(autouse=True)
def _torch_threads():
    # The suite shares a 2-core machine; one intra-op thread keeps it predictable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def frame_factory():
    """`make_frame` for tests that build their own frames (module fixtures included)."""
    return make_frame


@pytest.fixture(scope="session")
def tiny_sets() -> list[str]:
    """TINY as CLI arguments: ['--set', 'windows.lookback=24', '--set', ...]."""
    out: list[str] = []
    for item in TINY_SETS:
        out += ["--set", item]
    return out


@pytest.fixture
def wide_frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture
def wide_csv(tmp_path: Path, wide_frame: pd.DataFrame) -> Path:
    path = tmp_path / "series.csv"
    wide_frame.to_csv(path, index=False)
    return path


def tiny_raw(**sections: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of TINY with some keys of some sections replaced."""
    raw = copy.deepcopy(TINY)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture
def tiny_config() -> Config:
    return build_config(tiny_raw(), "tiny test config")


@pytest.fixture
def tiny_series(wide_frame: pd.DataFrame) -> SeriesSet:
    return frame_to_series(wide_frame, DataConfig(), source="tiny")


@pytest.fixture
def tiny_prepared(tiny_series: SeriesSet, tiny_config: Config) -> Prepared:
    return prepare(tiny_series, tiny_config.split, tiny_config.windows)


# Tiny models for the batch-forecast tests of both engines (tests/batch_files.py).
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-channel (a, b) bundle directory."""
    from tests.batch_files import train_bundle

    return train_bundle(tmp_path_factory.mktemp("two-channel"), ["a", "b"])


@pytest.fixture(scope="module")
def mono_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-channel (a) bundle directory."""
    from tests.batch_files import train_bundle

    return train_bundle(tmp_path_factory.mktemp("one-channel"), ["a"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store where tiny-model v1 is champion (the first model always is)."""
    from forecast.tracking import train_tracked
    from tests.tracked import config, series_csv

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_tracked(config(root, series_csv(root / "series.csv"), train={"epochs": 1}), uri)
    return uri
