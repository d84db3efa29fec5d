"""Forecasts from a trained bundle, for the CLI, the MLflow pyfunc and the HTTP service.

History frame layout (one row per time step and series):
    [series_id]   optional; without it the frame is one series
    [timestamp]   optional; the bundle's timestamp column name. With it rows are sorted,
                  checked for gaps, and the output gets future timestamps
    <channel>...  one numeric column per channel the model was trained on

Forecast frame layout: series_id, step (1..h), [timestamp], then one column per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from forecast.bundle import Bundle
from forecast.config import DataConfig
from forecast.data import HISTORY_FIXES, frame_to_series, has_utc_offset, numeric_columns
from forecast.errors import DataError
from forecast.intervals import Calibration, interval_quantiles, percent_name, spread

SERIES_ID, STEP = "series_id", "step"


class Forecaster:
    """Batches histories of any length ≥ min_history into one forward pass."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.meta = bundle.meta
        self.model = bundle.model.eval()
        self._mean = bundle.mean.astype(np.float32)
        self._scale = bundle.scale.astype(np.float32)

    @property
    def lookback(self) -> int:
        return self.meta.lookback

    @property
    def horizon(self) -> int:
        return self.meta.horizon

    @property
    def channels(self) -> list[str]:
        return self.meta.channels

    def check_history(self, values: np.ndarray, where: str) -> None:
        C = len(self.channels)
        if values.ndim != 2 or values.shape[1] != C:
            raise DataError(f"{where}: expected [steps x {C}] values, got shape {values.shape}")
        if len(values) < self.meta.min_history:
            raise DataError(f"{where}: {len(values)} steps of history; the model needs at least "
                            f"{self.meta.min_history} (lookback {self.lookback})")
        if not np.isfinite(values).all():
            raise DataError(f"{where}: history holds NaN or infinite values (or values beyond "
                            "float32's range, about ±3.4e38)")

    def predict_arrays(self, histories: list[np.ndarray], horizon: int | None = None,
                       ids: list[str] | None = None) -> np.ndarray:
        """Histories [T_i x C] in original units → forecasts [N x h x C] in original units."""
        forecast = self.unchecked_forecast(histories, horizon, ids)
        broken = np.flatnonzero(~np.isfinite(forecast).all(axis=(1, 2)))
        if len(broken):
            raise DataError(self.overflow(histories, ids, int(broken[0])))
        return forecast

    def overflow(self, histories: list[np.ndarray], ids: list[str] | None, i: int) -> str:
        """Why series i's forecast is not finite: finite inputs far outside the training scale
        can overflow float32 inside the model."""
        return (f"series {ids[i] if ids else i!r}: the forecast overflowed float32 (largest "
                f"|history value| {np.abs(histories[i]).max():.3g}); rescale the series to "
                "nearer the training data's range")

    def unchecked_forecast(self, histories: list[np.ndarray], horizon: int | None = None,
                           ids: list[str] | None = None) -> np.ndarray:
        """predict_arrays without the overflow check: a series may forecast inf or NaN."""
        h = self._steps(horizon)
        x, pad = self._inputs(histories, ids)
        return self._forward(x, pad, h)

    def predict_quantiles(self, histories: list[np.ndarray], quantiles: Sequence[float],
                          horizon: int | None = None, ids: list[str] | None = None,
                          field: str = "quantiles") -> tuple[np.ndarray, np.ndarray]:
        """Point forecasts [N x h x C] and their quantiles [N x h x C x Q] at `quantiles`
        (levels in (0, 1)), in original units; `field` names the levels in errors."""
        calibration = self.calibration(field)
        scores = calibration.score_quantiles(quantiles, field)  # [Q x H x C]
        h = self._steps(horizon)
        x, pad = self._inputs(histories, ids)
        point = self._forward(x, pad, h)
        broken = np.flatnonzero(~np.isfinite(point).all(axis=(1, 2)))
        if len(broken):
            raise DataError(self.overflow(histories, ids, int(broken[0])))
        valid = torch.from_numpy(~pad)[..., None]
        width = spread(torch.from_numpy(x), valid).numpy() * self._scale  # [N x C], original
        bands = point[..., None] + width[:, None, :, None] * scores[:, :h].transpose(1, 2, 0)
        return point, bands.astype(np.float32)

    def check_bands(self, quantiles: Sequence[float], levels: Sequence[float],
                    fields: tuple[str, str] = ("--quantiles", "--levels")) -> None:
        """A ConfigError naming the field when the calibration cannot give a quantile or an
        interval (or the model has none), before any data is read."""
        if not (quantiles or levels):
            return
        calibration = self.calibration(fields[0] if quantiles else fields[1])
        calibration.check_levels(quantiles, fields[0])
        for level in levels:
            calibration.check_coverage(level, fields[1])

    def calibration(self, field: str = "quantiles") -> Calibration:
        if self.bundle.calibration is None:
            raise DataError(f"{field}: this model was saved without interval calibration; "
                            "retrain it with `forecast train` to get quantiles")
        return self.bundle.calibration

    def _steps(self, horizon: int | None) -> int:
        h = self.horizon if horizon is None else horizon
        if not 1 <= h <= self.horizon:
            raise DataError(f"horizon must be between 1 and {self.horizon}, got {h}")
        return h

    def _inputs(self, histories: list[np.ndarray], ids: list[str] | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Scaled, left-padded model inputs [N x L x C] and their padding mask [N x L]."""
        L, C = self.lookback, len(self.channels)
        x = np.zeros((len(histories), L, C), dtype=np.float32)
        pad = np.zeros((len(histories), L), dtype=bool)
        if not self._all_valid(histories):  # find the first bad one, in its own words
            for i, values in enumerate(histories):
                self.check_history(values, f"series {ids[i] if ids else i!r}")
        tails = [values[-L:] for values in histories]
        if histories and all(len(tail) == L for tail in tails):  # no padding: one array step
            x[:] = (np.stack(tails) - self._mean) / self._scale
            return x, pad
        for i, tail in enumerate(tails):
            x[i, L - len(tail):] = (tail - self._mean) / self._scale
            pad[i, : L - len(tail)] = True
        return x, pad

    def _all_valid(self, histories: list[np.ndarray]) -> bool:
        """`check_history` for all at once: the common case, where every one passes."""
        C, shortest = len(self.channels), self.meta.min_history
        if not all(v.ndim == 2 and v.shape[1] == C and len(v) >= shortest for v in histories):
            return False
        # only the tails reach the model, but a NaN anywhere in a history is refused
        return bool(np.isfinite(np.concatenate(histories)).all()) if histories else True

    def _forward(self, x: np.ndarray, pad: np.ndarray, h: int) -> np.ndarray:
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x), torch.from_numpy(pad) if pad.any() else None)
        return y[:, :h].numpy() * self._scale + self._mean

    def predict_frame(self, frame: pd.DataFrame, horizon: int | None = None,
                      quantiles: Sequence[float] = (), levels: Sequence[float] = ()
                      ) -> pd.DataFrame:
        """A history frame (layout above) → a forecast frame (layout above), with a column
        per channel and quantile (`<channel>-q-10` for 0.1) and per channel and interval
        level (`<channel>-lo-80` and `<channel>-hi-80` for 0.8) when asked for."""
        ids, values, stamps = self.histories(frame)
        bounds = interval_quantiles(levels)
        wanted = sorted(set(quantiles) | set(bounds))
        if wanted:
            forecast, bands = self.predict_quantiles(values, wanted, horizon, ids)
        else:
            forecast = self.predict_arrays(values, horizon, ids)
        out = self.to_frame(forecast, ids, None if stamps is None else
                            pd.DatetimeIndex([s[-1] for s in stamps]))
        if wanted:
            out = out.join(pd.DataFrame(quantile_columns(
                bands, self.channels, wanted, quantiles, levels)))
        ts_col = self.meta.timestamp_column
        if stamps is not None and has_utc_offset(frame[ts_col]):
            # histories with offsets are read in UTC: say so, or UTC reads as local time
            out[ts_col] = out[ts_col].dt.tz_localize("UTC")
        return out

    def histories(self, frame: pd.DataFrame
                  ) -> tuple[list[str], list[np.ndarray], list[pd.DatetimeIndex] | None]:
        """A history frame → ids, values [T_i x C] and (with timestamps) each series' index,
        validated as a data file is. Lengths and NaN are checked later, by `check_history`."""
        ts_col = self.meta.timestamp_column
        has_ids = SERIES_ID in frame.columns
        if ts_col in frame.columns:
            cfg = DataConfig(layout="long" if has_ids else "wide", timestamp_column=ts_col,
                             id_column=SERIES_ID, columns=self.channels, freq=self.meta.freq)
            series = frame_to_series(frame, cfg, source="history", fixes=HISTORY_FIXES)
            return series.ids, series.values, series.timestamps
        missing = [c for c in self.channels if c not in frame.columns]
        if missing:
            raise DataError(f"history: column(s) {missing} missing; the model needs "
                            f"{self.channels}")
        # Same checks as a file: a non-numeric value is a DataError naming column and row.
        numeric = numeric_columns(frame.reset_index(drop=True), self.channels, "history",
                                  HISTORY_FIXES)
        groups = numeric.groupby(frame[SERIES_ID].astype(str).to_numpy(), sort=False) \
            if has_ids else [("series", numeric)]
        ids = [str(k) for k, _ in groups]
        values = [g.to_numpy(dtype=np.float32) for _, g in groups]
        return ids, values, None

    def regular_histories(self, frame: pd.DataFrame
                          ) -> tuple[list[str], list[np.ndarray], pd.DatetimeIndex] | None:
        """`histories` for a frame that needs none of its fixes, found in whole-array steps:
        ids, values [T_i x C] and each series' last timestamp. None when any series could
        need `histories`' own checks (or words): rows not contiguous by id or not time-sorted,
        a gap, duplicate or off-grid time, a missing or non-finite value, a history too
        short, or a calendar frequency (month, week) whose steps are not a fixed length."""
        ts_col = self.meta.timestamp_column
        offset = pd.tseries.frequencies.to_offset(self.meta.freq)
        if (SERIES_ID not in frame.columns or ts_col not in frame.columns or len(frame) == 0
                or not isinstance(offset, pd.offsets.Tick)
                or not pd.api.types.is_datetime64_dtype(frame[ts_col].dtype)
                or not all(pd.api.types.is_numeric_dtype(frame[c].dtype)
                           for c in self.channels)):
            return None
        sids = frame[SERIES_ID].to_numpy()
        starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])
        ends = np.r_[starts[1:], len(sids)]
        stamps = frame[ts_col].to_numpy().astype("datetime64[ns]").view("i8")
        steps = np.diff(stamps)
        steps[starts[1:] - 1] = offset.nanos  # a series' first row follows another series
        values = frame[self.channels].to_numpy(dtype=np.float64)
        if (len(pd.unique(sids)) != len(starts) or (steps != offset.nanos).any()
                or (ends - starts < self.meta.min_history).any()
                or not (np.abs(values) <= np.finfo(np.float32).max).all()):  # NaN fails too
            return None
        ids = [str(s) for s in sids[starts]]
        series = np.split(values.astype(np.float32), starts[1:])
        last = pd.DatetimeIndex(frame[ts_col].to_numpy()[ends - 1])
        return ids, series, last

    def future_index(self, last: pd.Timestamp, steps: int) -> pd.DatetimeIndex:
        return pd.date_range(last, periods=steps + 1, freq=self.meta.freq)[1:]

    def future_stamps(self, last: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
        """The `steps` forecast times after each of `last`, series after series."""
        offset = pd.tseries.frequencies.to_offset(self.meta.freq)
        if not isinstance(offset, pd.offsets.Tick):  # months, weeks: calendar arithmetic
            return pd.DatetimeIndex(np.concatenate(
                [self.future_index(t, steps) for t in last])).as_unit(last.unit)
        ahead = np.arange(1, steps + 1) * pd.Timedelta(offset).as_unit("ns").to_timedelta64()
        grid = last.as_unit("ns").to_numpy()[:, None] + ahead[None, :]
        return pd.DatetimeIndex(grid.reshape(-1)).as_unit(last.unit)

    def to_frame(self, forecast: np.ndarray, ids: list[str],
                 last: pd.DatetimeIndex | None) -> pd.DataFrame:
        """Forecasts [N x h x C] → a forecast frame; `last`: each series' last observed time,
        which gives the forecast's timestamps."""
        n, h, C = forecast.shape
        out = pd.DataFrame({
            SERIES_ID: np.repeat(ids, h),
            STEP: np.tile(np.arange(1, h + 1), n),
        })
        if last is not None:
            out[self.meta.timestamp_column] = self.future_stamps(last, h)
        for c, name in enumerate(self.channels):
            out[name] = forecast[:, :, c].reshape(-1)
        return out


def quantile_column_names(channels: list[str], quantiles: Sequence[float],
                          levels: Sequence[float]) -> list[str]:
    """Nixtla's names, in `quantile_columns`' order: `<channel>-q-<percent>` per quantile,
    `<channel>-lo-<level>` and `-hi-<level>` per central interval."""
    return [name for channel in channels for name in (
        *[f"{channel}-q-{percent_name(q)}" for q in quantiles],
        *[f"{channel}-{side}-{percent_name(v)}" for v in levels for side in ("lo", "hi")])]


def quantile_columns(bands: np.ndarray, channels: list[str], wanted: list[float],
                     quantiles: Sequence[float], levels: Sequence[float]
                     ) -> dict[str, np.ndarray]:
    """Columns of a forecast frame from bands [N x h x C x Q] at levels `wanted`, named by
    `quantile_column_names`."""
    at = {round(q, 10): i for i, q in enumerate(wanted)}
    picks = [[at[round(q, 10)] for q in quantiles]
             + [at[round(b, 10)] for v in levels for b in ((1 - v) / 2, (1 + v) / 2)]
             for _ in channels]
    names = iter(quantile_column_names(channels, quantiles, levels))
    return {next(names): bands[:, :, c, j].reshape(-1)
            for c, js in enumerate(picks) for j in js}
