"""POST /v1/forecast: every series of a request in one batched forward pass."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import numpy as np
import orjson
import pandas as pd
import torch
from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError

from forecast.data import UTC_OFFSET
from forecast.errors import ConfigError, DataError
from forecast.intervals import interval_quantiles, percent_name
from forecast.predictor import Forecaster
from serving.deps import Model, State
from serving.json_body import StrictJSONRoute
from serving.model_store import LoadedModel
from serving.schemas import ForecastRequest, ForecastResponse, SeriesIn, cut, few

router = APIRouter(prefix="/v1", tags=["forecast"], route_class=StrictJSONRoute)


def _error(loc: tuple[Any, ...], msg: str) -> dict[str, Any]:
    return {"loc": ("body", *loc), "msg": msg, "type": "value_error"}


def _check_timestamps(series: SeriesIn, i: int, freq: str) -> tuple[pd.Timestamp | None,
                                                                    dict[str, Any] | None]:
    """The last timestamp, or an error: unparsable, unsorted, or off the model's frequency."""
    assert series.timestamps is not None
    loc = ("series", i, "timestamps")
    # an ISO-8601 time is ASCII; other text (a lone surrogate from a "\ud800" escape) would
    # also stop pandas' string storage with a UnicodeEncodeError, a 500
    foreign = [j for j, t in enumerate(series.timestamps) if not t.isascii()]
    if foreign:
        return None, _error((*loc, foreign[0]), f"{cut(series.timestamps[foreign[0]])!r} is "
                            "not an ISO-8601 timestamp")
    # utc=True: offsets that change within a series (daylight saving) must parse, not raise
    texts = pd.Series(series.timestamps)
    stamps = pd.to_datetime(texts, errors="coerce", format="ISO8601", utc=True)
    # pandas also reads "now" and "today"; an ISO-8601 time starts with the year's digits
    bad = (stamps.isna() | ~texts.str.match(r"\s*\d{4}")).to_numpy()
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        return None, _error((*loc, j), f"{cut(series.timestamps[j])!r} is not an ISO-8601 "
                            "timestamp")
    aware = texts.str.contains(UTC_OFFSET, regex=True).to_numpy()
    if aware.any() and not aware.all():
        j = int(np.flatnonzero(aware != aware[0])[0])
        return None, _error((*loc, j), f"timestamps mix local times and times with a UTC offset "
                            f"(at position {j}): give every timestamp an offset (+01:00 or Z) "
                            "or none")
    index = pd.DatetimeIndex(stamps).tz_localize(None)
    expected = pd.date_range(index[0], periods=len(index), freq=freq)
    if not index.equals(expected):
        j = int(np.flatnonzero(index != expected)[0])
        what = "not increasing" if j and index[j] <= index[j - 1] else "irregular"
        return None, _error((*loc, j), f"timestamps are {what} at position {j}: expected "
                            f"{expected[j].isoformat()} (one step of {freq!r} after the previous)")
    if not aware[0]:
        return index[-1], None
    # Forecast times carry the last history time's offset: a client reading them must not
    # take UTC for local time. Offsets alone say nothing of daylight-saving rules ahead.
    offset = pd.Timestamp(series.timestamps[-1]).utcoffset()
    return stamps.iloc[-1].tz_convert(timezone(offset)), None


def _histories(body: ForecastRequest, model: LoadedModel) -> tuple[list[np.ndarray],
                                                                  list[pd.Timestamp | None]]:
    forecaster = model.forecaster
    channels, L = forecaster.channels, forecaster.lookback
    minimum = forecaster.meta.min_history
    errors, histories, lasts = [], [], []
    first: dict[str, int] = {}
    for i, s in enumerate(body.series):
        j = first.setdefault(s.id, i)
        if j != i:  # the answers are matched to their series by id
            errors.append(_error(("series", i, "id"), f"id {cut(s.id)!r} is also series {j}'s: "
                                 "give every series of a request its own id"))
            continue
        given = set(s.history)
        missing = [c for c in channels if c not in given]
        unknown = sorted(given - set(channels))
        if missing or unknown:
            errors.append(_error(("series", i, "history"),
                                 f"expected exactly the channels {channels}; missing {missing}, "
                                 f"unknown {few(unknown)}"))
            continue
        n = len(s.history[channels[0]])
        if n < minimum:
            errors.append(_error(("series", i, "history"),
                                 f"{n} rows of history; this model needs at least {minimum} "
                                 f"(it uses the last {L})"))
            continue
        last = None
        if s.timestamps is not None:
            last, err = _check_timestamps(s, i, forecaster.meta.freq)
            if err is not None:
                errors.append(err)
                continue
        # only the last L rows reach the model: [T x C]; JSON admits finite values beyond
        # float32's range, which the cast turns into inf
        with np.errstate(over="ignore"):
            rows = np.array([s.history[c][-L:] for c in channels], dtype=np.float32).T
        if not np.isfinite(rows).all():
            t, k = (int(v) for v in np.argwhere(~np.isfinite(rows))[0])
            errors.append(_error(("series", i, "history", channels[k], n - len(rows) + t),
                                 "value beyond float32's range (about ±3.4e38): send it in a "
                                 "larger unit"))
            continue
        histories.append(rows)
        lasts.append(last)
    if errors:
        raise RequestValidationError(errors)
    return histories, lasts


def _check_levels(forecaster: Forecaster, quantiles: list[float], levels: list[float]
                  ) -> list[float]:
    """The quantile levels to compute, or a 422 naming the field the model cannot give."""
    wanted = sorted({round(q, 10) for q in quantiles} | set(interval_quantiles(levels)))
    if not wanted:
        return []
    field = "quantiles" if quantiles else "levels"
    if forecaster.bundle.calibration is None:
        raise RequestValidationError([_error((field,), "this model was saved without interval "
                                             "calibration; retrain it to get quantiles")])
    calibration = forecaster.bundle.calibration
    loc: tuple[str, int] = ("quantiles", 0)
    try:
        for j, q in enumerate(quantiles):
            loc = ("quantiles", j)
            calibration.check_levels([q], "quantiles")
        for j, v in enumerate(levels):
            loc = ("levels", j)
            calibration.check_coverage(v, "levels")
    except ConfigError as err:
        raise RequestValidationError([_error(loc, str(err))]) from None
    return wanted


@router.post(
    "/forecast", response_model=ForecastResponse, summary="Forecast one or many series",
    responses={401: {"description": "Missing or wrong bearer token"},
               413: {"description": "Body too large or too many series"},
               415: {"description": "Body not sent as application/json"},
               503: {"description": "No model loaded yet"}},
)
async def forecast(body: ForecastRequest, model: Model, state: State) -> Response:
    forecaster = model.forecaster
    if len(body.series) > state.settings.max_series:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"{len(body.series)} series in one request; the limit is "
                            f"{state.settings.max_series} (FORECAST_MAX_SERIES)")
    horizon = body.horizon or forecaster.horizon
    if horizon > forecaster.horizon:
        raise RequestValidationError([_error(("horizon",), f"horizon {horizon} is above the "
                                             f"model's {forecaster.horizon}")])
    quantiles = sorted(set(body.quantiles or []))
    levels = sorted({v / 100 for v in body.levels or []})
    wanted = _check_levels(forecaster, body.quantiles or [],
                           [v / 100 for v in body.levels or []])
    histories, lasts = _histories(body, model)
    ids = [s.id for s in body.series]
    try:
        with torch.inference_mode():  # [N x h x C], original units; bands [N x h x C x Q]
            if wanted:
                pred, bands = forecaster.predict_quantiles(histories, wanted, horizon, ids)
            else:
                pred = forecaster.predict_arrays(histories, horizon, ids)
    except DataError as err:  # a forecast float32 cannot carry (the inputs were checked)
        raise RequestValidationError([_error(("series",), str(err))]) from None
    if wanted:  # [N x Q x C x h]: each channel's steps contiguous, as orjson writes them
        bands = np.ascontiguousarray(bands.transpose(0, 3, 2, 1))
    at = {round(q, 10): j for j, q in enumerate(wanted)}
    channels = forecaster.channels
    out = []
    for i, s in enumerate(body.series):
        item: dict[str, Any] = {
            "id": s.id,
            "values": {c: pred[i, :, k] for k, c in enumerate(channels)},
        }
        if quantiles:
            item["quantiles"] = {f"{q:g}": {c: bands[i, at[round(q, 10)], k]
                                            for k, c in enumerate(channels)}
                                 for q in quantiles}
        if levels:
            item["intervals"] = {percent_name(v): {
                side: {c: bands[i, at[round(b, 10)], k] for k, c in enumerate(channels)}
                for side, b in (("lower", (1 - v) / 2), ("upper", (1 + v) / 2))}
                for v in levels}
        if lasts[i] is not None:
            item["timestamps"] = [t.isoformat() for t in forecaster.future_index(lasts[i],
                                                                                 horizon)]
        out.append(item)
    state.metrics.series.inc(len(out))
    payload = {"model": {"name": model.name, "version": model.version, "alias": model.alias},
               "horizon": horizon, "forecasts": out}
    # orjson writes the float32 arrays directly, far faster than json + lists of floats
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")
