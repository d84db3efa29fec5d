"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, model_validator

# Finite JSON numbers only: NaN/Infinity literals and numbers sent as strings are rejected.
Finite = Annotated[float, Strict(), AllowInfNan(False)]


def cut(text: str, width: int = 64) -> str:
    """`text`, shortened to `width` characters: error messages never echo unbounded input."""
    return text if len(text) <= width else text[:width] + "..."


def few(items: list[str], shown: int = 5) -> str:
    """At most `shown` items, each cut: a body of a million made-up channel names must not
    come back as a 10 MB error."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{[cut(n) for n in items[:shown]]}{more}"


class SeriesIn(BaseModel):
    """One series: its recent history per channel, oldest first."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=256, description="Echoed in the response.")
    history: dict[str, list[Finite]] = Field(
        ..., description="Channel name -> values, oldest first, all the same length. The last "
        "`lookback` values are used; shorter histories are padded down to `min_history`.",
    )
    timestamps: list[str] | None = Field(
        None, description="Optional ISO-8601 time of each history row, increasing at the "
        "model's frequency; with them the response carries the forecast's timestamps.",
    )

    @model_validator(mode="after")
    def _same_lengths(self) -> SeriesIn:
        lengths = {name: len(values) for name, values in self.history.items()}
        if not lengths:
            raise ValueError("history is empty: give one list of values per channel")
        if min(lengths.values()) == 0:
            empty = [n for n, v in lengths.items() if v == 0]
            raise ValueError(f"history of channel(s) {few(empty)} is empty")
        if len(set(lengths.values())) > 1:
            sizes = [f"{n}: {v}" for n, v in lengths.items()]
            raise ValueError(f"ragged history: channels have different lengths {few(sizes)}; "
                             "give every channel the same number of values")
        if self.timestamps is not None and len(self.timestamps) != next(iter(lengths.values())):
            raise ValueError(f"timestamps has {len(self.timestamps)} entries but the history "
                             f"has {next(iter(lengths.values()))} rows")
        return self


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: list[SeriesIn] = Field(..., min_length=1, description="One or more series.")
    horizon: Annotated[int, Strict()] | None = Field(
        None, ge=1, description="Steps to forecast, at most the model's horizon (its default)."
    )
    quantiles: list[Annotated[Finite, Field(gt=0, lt=1)]] | None = Field(
        None, max_length=99, description="Quantile levels in (0, 1), e.g. [0.1, 0.5, 0.9]: "
        "each series' answer then has `quantiles`, level -> channel -> values per step.")
    levels: list[Annotated[Finite, Field(gt=0, lt=100)]] | None = Field(
        None, max_length=99, description="Central prediction interval levels in percent, e.g. "
        "[80, 95]: each series' answer then has `intervals`, level -> lower / upper -> "
        "channel -> values per step.")


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str | None


class Interval(BaseModel):
    lower: dict[str, list[float]]
    upper: dict[str, list[float]]


class SeriesOut(BaseModel):
    id: str
    values: dict[str, list[float]] = Field(..., description="Channel -> forecast per step.")
    timestamps: list[str] | None = None
    quantiles: dict[str, dict[str, list[float]]] | None = Field(
        None, description="Level (as requested, e.g. '0.1') -> channel -> value per step.")
    intervals: dict[str, Interval] | None = Field(
        None, description="Level in percent (e.g. '80') -> lower and upper bounds.")


class ForecastResponse(BaseModel):
    model: ModelRef
    horizon: int
    forecasts: list[SeriesOut]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str | None
    run_id: str | None
    source: str
    lookback: int
    horizon: int
    min_history: int
    channels: list[str]
    frequency: str
    metrics: dict[str, float]


class Readiness(BaseModel):
    ready: bool
    model: ModelRef | None
    detail: str
