"""Prediction intervals and quantiles by split-conformal calibration on the validation windows.

After training, the model forecasts every validation window. Each error, divided by the spread
of the window's own lookback (per channel: its standard deviation, the scale RevIN normalises
by), is a conformity score. The scores' quantiles on a grid of levels, per horizon step and
channel, are stored beside the weights (`calibration.safetensors`, no pickle). A forecast's
q-quantile is then `point + spread * score_q[step, channel]`: scaled to each history, so one
model calibrates series of any size, and wider where a history is more volatile.

The score quantile at level q is the order statistic of rank ceil((n + 1) q) for q above 1/2
and floor((n + 1) q) below it (split conformal's finite-sample rank); levels between the grid's
are interpolated. A level whose rank falls outside 1..n cannot be given by n windows and is
refused, naming the field. Quantiles never cross: the grid is sorted and the spread positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from forecast.errors import ConfigError, ForecastError, first_line
from forecast.windows import WindowSet

CALIBRATION = "calibration.safetensors"
# 0.005, 0.01, ..., 0.995: every whole and half percent
GRID = np.round(np.arange(1, 200) / 200, 4)
# a history whose lookback is flat still gets an interval: its spread is at least this share
# of the training data's scale (scaled units are the training data's standard deviations)
MIN_SPREAD = 1e-3


@dataclass
class Calibration:
    levels: np.ndarray  # [G] ascending, within what `windows` scores can give
    scores: np.ndarray  # [G x H x C] score quantiles, nondecreasing along the levels
    windows: int  # validation windows scored

    def check_levels(self, levels: Sequence[float], field: str) -> np.ndarray:
        """Levels as an array, or a ConfigError naming `field` and the range available."""
        q = np.asarray(levels, dtype=np.float64)
        lo, hi = float(self.levels[0]), float(self.levels[-1])
        bad = [float(v) for v in q if not (lo <= v <= hi)]
        if bad:
            raise ConfigError(
                f"{field}: {bad[0]:g} is outside {lo:g}..{hi:g}, the quantile levels this "
                f"model's calibration on {self.windows} validation windows can give")
        return q

    def gives(self, coverage: float) -> bool:
        """Whether the central interval of this coverage (0.8 for 80%) is within reach."""
        return self.levels[0] <= (1 - coverage) / 2 and (1 + coverage) / 2 <= self.levels[-1]

    def check_coverage(self, coverage: float, field: str) -> None:
        """A ConfigError naming `field` (e.g. 'levels 99.9') for an interval out of reach."""
        self.check_levels(interval_quantiles([coverage]), f"{field} {percent_name(coverage)}")

    def score_quantiles(self, levels: Sequence[float], field: str = "quantiles") -> np.ndarray:
        """Score quantiles at `levels`: [Q x H x C], interpolated between the grid's levels."""
        q = self.check_levels(levels, field)
        G = len(self.levels)
        above = np.clip(np.searchsorted(self.levels, q, side="left"), 1, G - 1)
        below = above - 1
        span = self.levels[above] - self.levels[below]
        t = np.clip((q - self.levels[below]) / span, 0.0, 1.0)[:, None, None]
        out = self.scores[below] + t * (self.scores[above] - self.scores[below])
        # float rounding must not make two levels cross: running maximum in level order
        order = np.argsort(q, kind="stable")
        out[order] = np.maximum.accumulate(out[order], axis=0)
        return out


def conformal_ranks(n: int, levels: np.ndarray) -> np.ndarray:
    """1-based ranks of the order statistics that give each level's quantile from n scores."""
    scaled = (n + 1) * levels
    return np.where(levels >= 0.5, np.ceil(scaled - 1e-9), np.floor(scaled + 1e-9)).astype(int)


def spread(history: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per window and channel, the standard deviation of the lookback over its real steps,
    floored: [B x L x C] (scaled units) → [B x C]."""
    if valid is None:
        std = history.std(dim=1, unbiased=False)
    else:
        w = valid.to(history.dtype)  # [B x L x 1]
        n = w.sum(dim=1).clamp_min(1.0)
        mean = (history * w).sum(dim=1) / n
        std = (((history - mean[:, None]) ** 2 * w).sum(dim=1) / n).sqrt()
    return std.clamp_min(MIN_SPREAD)


Forecast = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]


def _forecast_fn(forecast: Forecast) -> Callable[[torch.Tensor], torch.Tensor]:
    """Windows [B x L x C] → point forecasts [B x H x C] on the CPU, scaled units: a model
    (moved to its device and back) or a baseline's function as it is."""
    if not isinstance(forecast, torch.nn.Module):
        return forecast
    model = forecast.eval()
    device = next(model.parameters()).device
    return lambda x: model(x.to(device)).float().cpu()


@torch.inference_mode()
def calibrate(forecast: Forecast, windows: WindowSet, batch_size: int = 512) -> Calibration:
    """Score every window of `windows` (the validation block) and keep the scores' quantiles;
    `forecast`: the model, or a baseline's forecast function, which then gets intervals of its
    own."""
    predict = _forecast_fn(forecast)
    scores = []
    for x, y in windows.batches(batch_size):
        pred = predict(x)
        scores.append(((y - pred) / spread(x)[:, None, :]).numpy())
    if not scores:
        raise ForecastError("no validation windows to calibrate the intervals on")
    every = np.sort(np.concatenate(scores), axis=0)  # [n x H x C]
    n = len(every)
    ranks = conformal_ranks(n, GRID)
    usable = (ranks >= 1) & (ranks <= n)
    if usable.sum() < 2:
        raise ForecastError(f"{n} validation windows are too few to calibrate intervals; "
                            "give the validation split more rows")
    return Calibration(GRID[usable], every[ranks[usable] - 1].astype(np.float32), n)


def save_calibration(directory: Path, calibration: Calibration) -> None:
    (directory / CALIBRATION).write_bytes(save(
        {"levels": torch.from_numpy(calibration.levels.astype(np.float64)),
         "scores": torch.from_numpy(np.ascontiguousarray(calibration.scores))},
        metadata={"windows": str(calibration.windows)}))


def load_calibration(directory: Path, horizon: int, n_channels: int) -> Calibration | None:
    """The bundle's calibration, None when it has none (a model saved without intervals)."""
    path = directory / CALIBRATION
    if not path.is_file():
        return None
    fix = f"re-save the model with `forecast train` ({path} is damaged"
    try:
        with safe_open(str(path), framework="pt") as handle:
            windows = int((handle.metadata() or {}).get("windows", "0"))
            levels = handle.get_tensor("levels").numpy()
            scores = handle.get_tensor("scores").numpy()
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ForecastError(f"{fix}: {first_line(err)[:200]})") from None
    ok = (levels.ndim == 1 and len(levels) >= 2 and scores.shape == (len(levels), horizon,
                                                                      n_channels)
          and np.isfinite(levels).all() and np.isfinite(scores).all()
          and (np.diff(levels) > 0).all() and (np.diff(scores, axis=0) >= 0).all()
          and 0 < levels[0] and levels[-1] < 1 and windows > 0)
    if not ok:
        raise ForecastError(f"{fix}: not {len(levels)} ascending levels in (0, 1) with "
                            f"nondecreasing scores for {horizon} steps x {n_channels} channels)")
    return Calibration(levels, scores, windows)


def parse_levels(text: str, field: str, percent: bool) -> list[float]:
    """'0.1,0.5,0.9' (quantiles) or '80,95' (interval levels, percent) → sorted unique values
    in (0, 1) as quantile levels or coverage shares; a ConfigError names `field`."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"{field}: {part.strip()!r} is not a number; give e.g. "
                                f"{'80,95' if percent else '0.1,0.5,0.9'}") from None
        share = value / 100 if percent else value
        if not (math.isfinite(share) and 0 < share < 1):
            raise ConfigError(f"{field}: {part.strip()} is not between "
                                f"{'0 and 100' if percent else '0 and 1'} (exclusive)")
        values.append(share)
    return sorted(set(values))


def interval_quantiles(levels: Sequence[float]) -> list[float]:
    """The quantile levels that bound central intervals of coverage `levels` (0.8 → 0.1, 0.9)."""
    return sorted({round(q, 10) for c in levels for q in ((1 - c) / 2, (1 + c) / 2)})


WQL_LEVELS = tuple(np.round(np.arange(1, 10) / 10, 1))  # 0.1 ... 0.9


@dataclass
class Bands:
    """A calibration's score offsets for the scores: each central interval's pair of bounds
    and the quantiles 0.1 ... 0.9 of the weighted quantile loss (None where out of reach)."""

    bounds: dict[float, torch.Tensor]  # coverage → [2 x H x C]
    wql: torch.Tensor | None  # [Q x H x C]

    @classmethod
    def of(cls, calibration: Calibration, coverages: Sequence[float] = (0.8, 0.95)) -> Bands:
        """The intervals of `coverages` the calibration can give, each left out otherwise."""
        bounds = {c: torch.from_numpy(calibration.score_quantiles(
            [(1 - c) / 2, (1 + c) / 2], "coverages")).float()
            for c in coverages if calibration.gives(c)}
        reach = all(calibration.levels[0] <= q <= calibration.levels[-1] for q in WQL_LEVELS)
        return cls(bounds, torch.from_numpy(calibration.score_quantiles(WQL_LEVELS)).float()
                   if reach else None)


def error_terms(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor, bands: Bands,
                season: int = 1, mean: np.ndarray | None = None,
                scale: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Per window, step and channel ([B x H x C]), the terms whose sums give every score
    (`summarise`): se and ae (scaled units), inside_80 and width_80 per interval, msis_95
    (the interval score over the lookback's mean absolute seasonal difference), pinball
    (summed over the WQL levels) and magnitude (|actual|), both in the data's own units."""
    s = spread(x)[:, None, :]
    err = y - pred
    out = {"se": err**2, "ae": err.abs()}
    for c, (low, high) in bands.bounds.items():
        lower, upper = pred + s * low, pred + s * high
        name = percent_name(c)
        out[f"inside_{name}"] = ((y >= lower) & (y <= upper)).to(y.dtype)
        out[f"width_{name}"] = upper - lower
        if math.isclose(c, 0.95):
            lag = season if x.shape[1] > season else 1
            naive = (x[:, lag:] - x[:, :-lag]).abs().mean(dim=1).clamp_min(MIN_SPREAD)
            alpha = 1 - c
            score = (upper - lower) + 2 / alpha * ((lower - y).clamp_min(0)
                                                   + (y - upper).clamp_min(0))
            out["msis_95"] = score / naive[:, None, :]
    if bands.wql is not None:
        mu = torch.zeros(1) if mean is None else torch.from_numpy(np.asarray(mean)).float()
        sd = torch.ones(1) if scale is None else torch.from_numpy(np.asarray(scale)).float()
        actual = y * sd + mu
        pinball = torch.zeros_like(y)
        for q, offset in zip(WQL_LEVELS, bands.wql, strict=True):
            miss = actual - (pred + s * offset) * sd - mu
            pinball += torch.maximum(q * miss, (q - 1) * miss)
        out["pinball"], out["magnitude"] = pinball, actual.abs()
    return out


def summarise(sums: dict[str, np.ndarray], count: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from summed `error_terms` over `count` elements (arrays of any one shape: a
    whole block, per horizon step, per backtest cutoff): mse, mae, coverage_80,
    interval_width_80, ..., msis_95, and wql (NaN where the actuals sum to 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"mse": sums["se"] / count, "mae": sums["ae"] / count}
        for key, value in sums.items():
            if key.startswith("inside_"):
                name = key.removeprefix("inside_")
                out[f"coverage_{name}"] = value / count
                out[f"interval_width_{name}"] = sums[f"width_{name}"] / count
        if "pinball" in sums:
            magnitude = sums["magnitude"]
            out["wql"] = np.where(magnitude > 0, 2 * sums["pinball"] / magnitude, np.nan) \
                / len(WQL_LEVELS)
        if "msis_95" in sums:
            out["msis_95"] = sums["msis_95"] / count
    return out


@dataclass
class IntervalScores:
    overall: dict[str, float]  # coverage_80, interval_width_80, ..., wql, msis_95
    per_step: dict[str, np.ndarray]  # the same names, [H] each (horizon step 1 first)


@torch.inference_mode()
def interval_scores(forecast: Forecast, calibration: Calibration, windows: WindowSet,
                    coverages: Sequence[float] = (0.8, 0.95), batch_size: int = 512,
                    season: int = 1, mean: np.ndarray | None = None,
                    scale: np.ndarray | None = None) -> IntervalScores:
    """Probabilistic scores on every window of `windows`, overall and per horizon step, each
    left out where the calibration cannot give its levels (too few validation windows):

    - coverage_80, interval_width_80, ...: the share of actuals inside each central interval,
      and its mean width (scaled units);
    - wql: the mean over q = 0.1 ... 0.9 of the weighted quantile loss 2 Σ pinball_q / Σ |y|,
      in the data's own units (`mean` and `scale` undo the scaling; an approximation of CRPS);
    - msis_95: the mean scaled interval score of the 95% interval, each window's score divided
      by its lookback's mean absolute seasonal difference (lag `season`, 1 where the lookback
      is not longer than a season).

    `forecast`: the model, or a baseline's function with its own calibration."""
    predict = _forecast_fn(forecast)
    bands = Bands.of(calibration, coverages)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for x, y in windows.batches(batch_size):
        terms = error_terms(predict(x), x, y, bands, season, mean, scale)
        for key, value in terms.items():
            step = value.sum(dim=(0, 2), dtype=torch.float64).numpy()  # [H]
            sums[key] = step if key not in sums else sums[key] + step
        count += y.shape[0] * y.shape[2]
    per_step = {k: v for k, v in summarise(sums, np.full(windows.horizon, count)).items()
                if k not in ("mse", "mae")}  # `evaluate` reports the point errors
    total = summarise({k: np.array(v.sum()) for k, v in sums.items()},
                      np.array(count * windows.horizon))
    overall = {k: float(total[k]) for k in per_step if np.isfinite(total[k])}
    return IntervalScores(overall, per_step)


def percent_name(share: float) -> str:
    """0.8 → '80', 0.975 → '97.5': a level in a name."""
    return f"{round(share * 100, 6):g}"
