"""Where the series come from, how they are split, and the windows cut from them."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from forecast.config.fields import MAX_STEPS, LocalPath, Section


class DataConfig(Section):
    """Where the series come from and how they are checked."""

    path: LocalPath | None = Field(
        None, description="CSV or Parquet file; null means the built-in synthetic demo series."
    )
    layout: Literal["wide", "long"] = Field(
        "wide",
        description="wide: a timestamp column plus one column per channel (like ETTh1). "
        "long: one row per (series id, timestamp) with value column(s); many series.",
    )
    timestamp_column: str = Field("date", description="Name of the timestamp column.")
    id_column: str = Field("series_id", description="Series id column (long layout only).")
    columns: list[str] | None = Field(
        None, min_length=1,
        description="Channels to model. wide: default all columns except the timestamp. "
        "long: default ['value'].",
    )
    freq: str | None = Field(
        None, description="Pandas frequency alias (e.g. 'h', '15min', 'D'); inferred if null."
    )
    missing: Literal["error", "interpolate", "ffill"] = Field(
        "error",
        description="What to do with missing values and gaps in the time index: stop with an "
        "error naming the first one (default), linearly interpolate, or carry forward.",
    )

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns: list[str] | None) -> list[str] | None:
        if columns is not None:
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:
                raise ValueError(f"names {repeated} more than once; list each "
                                 "channel once")
        return columns


class SplitConfig(Section):
    """Chronological train/validation/test split, applied to each series separately."""

    by: Literal["fractions", "rows", "dates"] = Field(
        "fractions", description="How train/val/test are given."
    )
    train: float | int | str = Field(
        0.7, description="fractions: share of rows; rows: row count; dates: end (exclusive)."
    )
    val: float | int | str = Field(
        0.1, description="fractions: share of rows; rows: row count; dates: end (exclusive)."
    )
    test: float | int | str | None = Field(
        0.2,
        description="fractions: share; rows: count; dates: end (exclusive). null: to the end.",
    )

    @field_validator("train", "val", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # pydantic's own error lists each branch of the union ("split.train.float: ...")
        if value is None:
            raise ValueError("is null; give a fraction, a row count or a date as split.by says "
                             "(only split.test may be null: to the end)")
        return value

    @model_validator(mode="after")
    def _check_kinds(self) -> SplitConfig:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        if self.by == "fractions":
            for name, v in parts.items():
                if v is None:
                    continue
                if isinstance(v, str) or not 0 < float(v) < 1:
                    raise ValueError(f"split.{name} must be a fraction in (0, 1) when by=fractions")
            total = sum(float(v) for v in parts.values() if v is not None)
            if total > 1 + 1e-9:
                raise ValueError(f"split fractions add up to {total:g}; they must be at most 1")
        elif self.by == "rows":
            for name, v in parts.items():
                if v is None:
                    continue
                if isinstance(v, str | float) or int(v) <= 0:
                    raise ValueError(f"split.{name} must be a positive row count when by=rows")
        else:
            stamps = {}
            for name, v in parts.items():
                if v is None:
                    continue
                try:
                    stamps[name] = pd.Timestamp(str(v))
                except ValueError:
                    raise ValueError(
                        f"split.{name} = {v!r} is not a date; use e.g. '2017-06-01'"
                    ) from None
            ordered = [stamps[k] for k in ("train", "val", "test") if k in stamps]
            if ordered != sorted(ordered):
                raise ValueError("split dates must increase: train < val < test")
        return self


class WindowConfig(Section):
    """Lookback/horizon windows over the scaled series."""

    # bounded so that a mistyped 10**20 is a config error, not an overflow deep in numpy
    lookback: int = Field(336, gt=0, le=MAX_STEPS, description="L: input steps the model sees.")
    horizon: int = Field(24, gt=0, le=MAX_STEPS, description="H: steps forecast ahead.")
    stride: int = Field(1, gt=0, le=MAX_STEPS,
                        description="Step between training windows (eval uses 1).")
