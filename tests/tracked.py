"""A small tracked configuration and its data file, shared by the MLflow and pipeline tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.config import Config, build_config

NAME = "tiny-model"
EXPERIMENT = "tiny-experiment"

BASE: dict[str, Any] = {
    "name": "tiny",
    "data": {"path": None},
    "split": {"by": "fractions", "train": 0.7, "val": 0.1, "test": 0.2},
    "windows": {"lookback": 48, "horizon": 12},
    # no linear skip: the tests of the registry, jobs and service train the encoder alone
    "model": {"patch_len": 12, "patch_stride": 6, "d_model": 8, "n_heads": 2, "n_layers": 1,
              "d_ff": 16, "dropout": 0.0, "linear_skip": False},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.005, "patience": 0, "seed": 0,
              "max_windows_per_epoch": 1024, "num_threads": 1, "progress": False},
    "eval": {"linear_max_windows": 1000},
    # a 2-epoch model this small loses to the Ridge baseline on this clean sine: the tests of
    # the registry, jobs and service need it promoted all the same (test_gate_baselines checks
    # that, by default, it is not)
    "tracking": {"experiment": EXPERIMENT, "registered_model": NAME,
                 "allow_below_baselines": True},
}


def config(tmp: Path, csv: Path, **sections: dict[str, Any]) -> Config:
    raw = copy.deepcopy(BASE)
    raw["data"]["path"] = str(csv)
    raw["output_dir"] = str(tmp / "outputs")
    for section, values in sections.items():
        raw[section].update(values)
    return build_config(raw, "test")


def series_csv(path: Path, n: int = 1500) -> Path:
    t = np.arange(n)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=n, freq="h"),
        "a": 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(n),
        "b": 5 + 2 * np.cos(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(n),
    })
    frame.to_csv(path, index=False)
    return path
