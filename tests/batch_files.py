"""Files and tiny models shared by the batch-forecast tests of both engines (the fixtures
that use them are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from forecast.config import DataConfig, build_config
from forecast.data import frame_to_series
from forecast.runner import train_and_evaluate
from tests.conftest import make_frame, tiny_raw

H = 6  # the TINY model's horizon; lookback 24, min_history 8
LENGTHS = [30, 8, 24, 61, 12, 100, 25]  # ≥ min_history; some shorter than the lookback


def train_bundle(out: Path, channels: list[str]) -> Path:
    raw = tiny_raw(train={"epochs": 1})
    raw["output_dir"] = str(out)
    series = frame_to_series(make_frame(channels=channels), DataConfig(columns=channels))
    return train_and_evaluate(build_config(raw, "batch test"), series).model_dir


def long_frame(lengths: list[int] = LENGTHS, prefix: str = "s") -> pd.DataFrame:
    """One block of rows per series, each starting at its own hour."""
    parts = []
    for i, n in enumerate(lengths):
        part = make_frame(n=n, seed=i, start=str(pd.Timestamp("2024-01-01") + pd.Timedelta(
            hours=7 * i)))
        part.insert(0, "series_id", f"{prefix}{i}")
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def bad_frame() -> tuple[pd.DataFrame, dict[str, str]]:
    """Seven series, five of them bad; and a phrase of each bad one's reason."""
    frame = long_frame([30] * 7).astype({"a": object, "date": object})
    rows = {sid: frame.index[frame["series_id"] == sid] for sid in frame["series_id"].unique()}
    frame = frame.drop(index=rows["s1"][5:])  # s1: 5 rows, fewer than min_history 8
    frame.loc[rows["s2"][27], "b"] = np.nan  # s2: a missing value in the last 24 rows
    frame = frame.drop(index=rows["s3"][20])  # s3: a gap
    frame.loc[rows["s4"][2], "a"] = "oops"  # s4: text, early in the series
    frame.loc[rows["s5"][0], "date"] = "yesterday"  # s5: not a timestamp
    reasons = {
        "s1": "5 steps of history; the model needs at least 8 (lookback 24)",
        "s2": "column 'b' is missing a value at",
        "s3": "1 missing time step(s) at frequency 'h'",
        "s4": "column 'a' row 97 has 'oops', which is not a number",
        "s5": "timestamp column 'date' row 125 has 'yesterday', which is not a timestamp",
    }
    return frame.reset_index(drop=True), reasons
