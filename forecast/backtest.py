"""Rolling-origin evaluation: forecasts from N cutoffs, S steps apart, scored per cutoff and
per horizon step for a model and the baselines, streaming.

A cutoff is the last time step of history: each series holding `lookback` steps up to it and
`horizon` steps after it gives one window at that cutoff. Cutoffs count back from the latest
such time, or from a given date. Window numbers map to rows by arithmetic (one `WindowIndex`
run per series, stride S), batches are gathered on demand, and only sums per cutoff and per
step are kept: memory does not grow with the number of cutoffs beyond a few numbers each.

Point errors (mse, mae) are in the scaled units of the model that forecast; the weighted
quantile loss in the data's own units. Every forecaster carries its own split-conformal
calibration: the model its bundle's, the baselines one made on data before the cutoffs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from forecast.baselines import LinearBaseline, seasonal_naive
from forecast.data import SeriesSet
from forecast.errors import ConfigError, DataError
from forecast.intervals import Bands, Calibration, calibrate, error_terms, summarise
from forecast.scaling import Scaler
from forecast.windows import WindowIndex, WindowSet

log = logging.getLogger(__name__)

# scores per cutoff and per step: the point errors, the intervals, WQL and MSIS
SCORES = ("mse", "mae", "coverage_80", "coverage_95", "interval_width_80",
          "interval_width_95", "wql", "msis_95")
# share of the rows before the first cutoff the baselines are fitted on; they calibrate on
# the rest, as training calibrates on its validation block
BASELINE_FIT_SHARE = 0.75

PointForecast = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scored:
    """One forecaster: scaled windows [B x L x C] → scaled forecasts [B x H x C], and the
    calibration of its intervals (None: point scores only)."""

    forecast: PointForecast
    calibration: Calibration | None


def plan_cutoffs(series: SeriesSet, count: int, step: int, lookback: int, horizon: int,
                 until: pd.Timestamp | None = None) -> pd.DatetimeIndex:
    """`count` cutoffs `step` time steps apart, ascending, the last the latest time with
    `horizon` steps after it in some series (at or before `until`, when given); a ConfigError
    names the flag when the earliest leaves no series `lookback` steps of history."""
    freq = pd.tseries.frequencies.to_offset(series.freq)
    long_enough = [s for s in series.timestamps if len(s) >= lookback + horizon]
    if not long_enough:
        raise DataError(f"no series holds the model's lookback and horizon ({lookback} + "
                        f"{horizon} steps); give a longer data file")
    last = max(stamps[-horizon - 1] for stamps in long_enough)
    if until is not None:
        if until < min(stamps[0] for stamps in series.timestamps):
            raise ConfigError(f"--until {until}: before the data begins")
        last = min(last, until)
        # onto the series' own time grid: the latest stamp at or before `until`
        last = max(stamps[stamps <= last][-1] for stamps in series.timestamps
                   if (stamps <= last).any())
    earliest = min(stamps[lookback - 1] for stamps in long_enough)
    fitting = []  # counted back from the last, stopping where history runs out
    for k in range(count):
        try:  # a step beyond any calendar overflows
            cutoff = last - freq * (step * k)
        except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
            break
        if cutoff < earliest:
            break
        fitting.append(cutoff)
    if len(fitting) < count:
        raise ConfigError(f"--cutoffs {count} with --step {step}: the cutoffs would reach "
                          f"back before the model's {lookback} steps of history; at most "
                          f"{len(fitting)} cutoffs fit, or lower --step")
    return pd.DatetimeIndex(fitting[::-1])


@dataclass
class CutoffWindows:
    """The windows at a plan's cutoffs over scaled, concatenated series."""

    windows: WindowSet
    cutoff_of_run: torch.Tensor  # cutoff number of each run's first window
    per_cutoff: np.ndarray  # windows at each cutoff

    def cutoff_numbers(self, k: torch.Tensor) -> torch.Tensor:
        index = self.windows.index
        run, starts = index.locate(k)
        return self.cutoff_of_run[run] + (starts - index.first_input[run]) // index.stride


def scaled_rows(series: SeriesSet, scaler: Scaler) -> tuple[torch.Tensor, np.ndarray]:
    """All series scaled and stacked [rows x C] (float32), and each series' first row."""
    values = [scaler.transform(v).astype(np.float32, copy=False) for v in series.values]
    offsets = np.cumsum([0] + [len(v) for v in values[:-1]])
    return torch.from_numpy(np.concatenate(values)), offsets


def cutoff_windows(series: SeriesSet, data: torch.Tensor, offsets: np.ndarray,
                   cutoffs: pd.DatetimeIndex, step: int, lookback: int, horizon: int,
                   only: int | None = None) -> CutoffWindows:
    """One window per series and cutoff where the series holds its history and target; at
    cutoff number `only` alone, when given (a refit's)."""
    firsts, counts, owners, first_cutoff = [], [], [], []
    per_cutoff = np.zeros(len(cutoffs), dtype=np.int64)
    for s, stamps in enumerate(series.timestamps):
        pos = stamps.get_indexer(cutoffs)  # -1 where the series lacks the cutoff
        ok = (pos >= lookback - 1) & (pos + horizon < len(stamps))
        if only is not None:
            ok &= np.arange(len(cutoffs)) == only
        per_cutoff += ok
        k = np.flatnonzero(ok)
        # runs of consecutive cutoffs: a regular series holds them `step` rows apart
        for run in np.split(k, np.flatnonzero(np.diff(k) != 1) + 1) if len(k) else []:
            firsts.append(offsets[s] + pos[run[0]] - lookback + 1)
            counts.append(len(run))
            owners.append(s)
            first_cutoff.append(run[0])
    if not firsts:
        raise DataError("no series holds the model's lookback and horizon around any cutoff; "
                        "give a longer data file or fewer cutoffs")
    index = WindowIndex(np.array(firsts, dtype=np.int64), np.array(counts, dtype=np.int64),
                        step, np.array(owners, dtype=np.int64))
    return CutoffWindows(WindowSet(data, index, lookback, horizon),
                         torch.tensor(first_cutoff, dtype=torch.int64), per_cutoff)


def fitted_baselines(series: SeriesSet, data: torch.Tensor, offsets: np.ndarray,
                     first_cutoff: pd.Timestamp, lookback: int, horizon: int, season: int,
                     max_windows: int) -> dict[str, Scored]:
    """The linear and seasonal-naive baselines, fitted and calibrated on the rows up to the
    first cutoff only (the linear fit on the first BASELINE_FIT_SHARE of them, both
    calibrations on the rest); none where those rows hold too few windows."""
    runs: dict[str, tuple[list[int], list[int], list[int]]] = {"fit": ([], [], []),
                                                                "calibrate": ([], [], [])}
    for s, stamps in enumerate(series.timestamps):
        n = int(stamps.searchsorted(first_cutoff, side="right"))  # rows up to the cutoff
        split = int(n * BASELINE_FIT_SHARE)
        for name, (lo, hi) in {"fit": (lookback, split),
                               "calibrate": (max(split, lookback), n)}.items():
            count = hi - lo - horizon + 1
            if count > 0:
                firsts, counts, owners = runs[name]
                firsts.append(offsets[s] + lo - lookback)
                counts.append(count)
                owners.append(s)
    sets = {name: WindowSet(data, WindowIndex(*(np.array(v, dtype=np.int64) for v in (f, c)),
                                              1, np.array(o, dtype=np.int64)),
                            lookback, horizon)
            for name, (f, c, o) in runs.items() if f}
    if len(sets) < 2 or len(sets["calibrate"]) < 2:
        log.warning("the baselines are left out: the rows before the first cutoff (%s) hold "
                    "too few windows of %d + %d steps to fit and calibrate them; backtest "
                    "fewer or later cutoffs to score them", first_cutoff, lookback, horizon)
        return {}
    if len(sets["fit"]) <= lookback:
        log.warning("the linear baseline is fitted on %d windows for %d inputs (the rows before "
                    "the first cutoff, %s): expect it to overfit and score badly; backtest "
                    "fewer or later cutoffs for a fair baseline", len(sets["fit"]), lookback,
                    first_cutoff)
    linear = LinearBaseline().fit(sets["fit"], max_windows)
    forecasts: dict[str, PointForecast] = {"linear": linear}
    if season <= lookback:
        forecasts["seasonal_naive"] = lambda x: seasonal_naive(x, horizon, season)
    return {name: Scored(f, calibrate(f, sets["calibrate"])) for name, f in forecasts.items()}


@dataclass
class BacktestSums:
    """Running sums of `error_terms` per forecaster, by cutoff [N] and by step [H]."""

    cutoffs: pd.DatetimeIndex
    horizon: int
    n_channels: int
    by_cutoff: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    by_step: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    windows: np.ndarray = field(init=False)  # series windows at each cutoff
    step_windows: dict[str, int] = field(default_factory=dict)  # windows each forecaster saw

    def __post_init__(self) -> None:
        self.windows = np.zeros(len(self.cutoffs), dtype=np.int64)

    @torch.inference_mode()
    def add(self, name: str, scored: Scored, cut: CutoffWindows, season: int,
            mean: np.ndarray, scale: np.ndarray, batch_size: int = 512) -> None:
        """Score forecaster `name` on every window of `cut`, in batches."""
        bands = Bands.of(scored.calibration) if scored.calibration is not None \
            else Bands({}, None)
        cutoff_sums = self.by_cutoff.setdefault(name, {})
        step_sums = self.by_step.setdefault(name, {})
        windows = cut.windows
        for lo in range(0, len(windows), batch_size):
            k = torch.arange(lo, min(lo + batch_size, len(windows)))
            x, y = windows.gather(k)
            which = cut.cutoff_numbers(k)
            terms = error_terms(scored.forecast(x).float(), x, y, bands, season, mean, scale)
            for key, value in terms.items():
                per_window = value.sum(dim=(1, 2), dtype=torch.float64)
                into = cutoff_sums.setdefault(key, np.zeros(len(self.cutoffs)))
                np.add.at(into, which.numpy(), per_window.numpy())
                steps = value.sum(dim=(0, 2), dtype=torch.float64).numpy()
                step_sums[key] = step_sums[key] + steps if key in step_sums else steps
            self.step_windows[name] = self.step_windows.get(name, 0) + len(k)

    def count_windows(self, cut: CutoffWindows) -> None:
        self.windows += cut.per_cutoff

    def cutoff_scores(self, i: int) -> dict[str, dict[str, float]]:
        """Each forecaster's scores at cutoff number i so far, NaN ones left out."""
        count = self.windows[i] * self.horizon * self.n_channels
        return {name: {k: float(v) for k, v in summarise(
                    {key: sums[key][i] for key in sums}, count).items() if np.isfinite(v)}
                for name, sums in self.by_cutoff.items()}

    def result(self) -> BacktestResult:
        C, H = self.n_channels, self.horizon
        by_cutoff, by_step, overall = {}, {}, {}
        for name, sums in self.by_cutoff.items():
            by_cutoff[name] = summarise(sums, self.windows * H * C)
            by_step[name] = summarise(self.by_step[name],
                                      np.full(H, self.step_windows[name] * C))
            total = summarise({k: np.array(v.sum()) for k, v in sums.items()},
                              np.array(self.windows.sum() * H * C))
            overall[name] = {k: float(v) for k, v in total.items() if np.isfinite(v)}
        return BacktestResult(self.cutoffs, self.windows, by_cutoff, by_step, overall)


@dataclass
class BacktestResult:
    cutoffs: pd.DatetimeIndex
    windows: np.ndarray  # series windows scored at each cutoff
    by_cutoff: dict[str, dict[str, np.ndarray]]  # forecaster → score → [N]
    by_step: dict[str, dict[str, np.ndarray]]  # forecaster → score → [H]
    overall: dict[str, dict[str, float]]  # forecaster → score, over every window

    def cutoff_frame(self) -> pd.DataFrame:
        """One row per cutoff and forecaster: cutoff, forecaster, windows, mse, ..."""
        frames = [pd.DataFrame({"cutoff": self.cutoffs, "forecaster": name,
                                "windows": self.windows,
                                **{k: scores[k] for k in SCORES if k in scores}})
                  for name, scores in self.by_cutoff.items()]
        return pd.concat(frames, ignore_index=True)

    def step_frame(self) -> pd.DataFrame:
        """One row per horizon step (1..H) and forecaster."""
        frames = [pd.DataFrame({"step": np.arange(1, len(next(iter(scores.values()))) + 1),
                                "forecaster": name,
                                **{k: scores[k] for k in SCORES if k in scores}})
                  for name, scores in self.by_step.items()]
        return pd.concat(frames, ignore_index=True)

    def table(self) -> str:
        names = [s for s in SCORES if any(s in o for o in self.overall.values())]
        head = f"{'forecaster':<16}" + "".join(f"{n:>18}" for n in names)
        lines = [head, "-" * len(head)]
        for name, scores in self.overall.items():
            lines.append(f"{name:<16}" + "".join(
                f"{scores[n]:>18.4f}" if n in scores else f"{'':>18}" for n in names))
        lines.append(f"{int(self.windows.sum())} windows at {len(self.cutoffs)} cutoffs, "
                     f"{self.cutoffs[0]} to {self.cutoffs[-1]}")
        return "\n".join(lines)
