"""Forecast error metrics, accumulated batch by batch over the same windows for every model.

Scaled-space MSE/MAE are the benchmark figures (values standardised with the training
scaler); MAE, RMSE, MASE and sMAPE are in the data's original units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def mase_scale(train_rows: np.ndarray, season: int) -> np.ndarray:
    """Per-channel mean absolute seasonal difference on the training rows (MASE denominator)."""
    m = season if len(train_rows) > season else 1
    diffs = np.abs(train_rows[m:] - train_rows[:-m])  # [T-m x C]
    scale = diffs.mean(0)
    # A channel that never changes would make every error infinite; fall back to 1.
    return np.where(scale > 0, scale, 1.0)


@dataclass
class Scores:
    """Averages over all windows, steps and channels, plus the per-step curves."""

    mse: float  # scaled
    mae: float  # scaled
    mae_orig: float
    rmse_orig: float
    mase: float
    smape: float  # percent, 0..200
    windows: int
    mse_per_step: list[float]
    mae_per_step: list[float]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}mse": self.mse, f"{prefix}mae": self.mae,
            f"{prefix}mae_orig": self.mae_orig, f"{prefix}rmse_orig": self.rmse_orig,
            f"{prefix}mase": self.mase, f"{prefix}smape": self.smape,
        }


class MetricAccumulator:
    """Running sums per horizon step, in float64, so that any number of windows fits."""

    def __init__(self, horizon: int, mean: np.ndarray, std: np.ndarray, mase_denom: np.ndarray):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        self.mase_denom = torch.as_tensor(mase_denom, dtype=torch.float64)
        self.sums = {k: torch.zeros(horizon, dtype=torch.float64)
                     for k in ("sq", "abs", "abs_o", "sq_o", "mase", "smape")}
        self.count = 0  # values per horizon step: windows x channels
        self.windows = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [B x H x C] in scaled units."""
        p, t = pred.double(), target.double()
        err = p - t
        err_o = err * self.std  # original units; the mean cancels
        p_o, t_o = p * self.std + self.mean, t * self.std + self.mean
        denom = p_o.abs() + t_o.abs()
        smape = torch.where(denom > 0, 2 * err_o.abs() / denom.clamp_min(1e-12), 0.0)
        s = self.sums
        s["sq"] += (err**2).sum((0, 2))
        s["abs"] += err.abs().sum((0, 2))
        s["sq_o"] += (err_o**2).sum((0, 2))
        s["abs_o"] += err_o.abs().sum((0, 2))
        s["mase"] += (err_o.abs() / self.mase_denom).sum((0, 2))
        s["smape"] += smape.sum((0, 2))
        self.count += p.shape[0] * p.shape[2]
        self.windows += p.shape[0]

    def result(self) -> Scores:
        if not self.count:
            raise ValueError("no windows were scored")
        n, s = self.count, self.sums
        total = n * len(s["sq"])
        return Scores(
            mse=float(s["sq"].sum() / total),
            mae=float(s["abs"].sum() / total),
            mae_orig=float(s["abs_o"].sum() / total),
            rmse_orig=float(np.sqrt(float(s["sq_o"].sum() / total))),
            mase=float(s["mase"].sum() / total),
            smape=float(100 * s["smape"].sum() / total),
            windows=self.windows,
            mse_per_step=(s["sq"] / n).tolist(),
            mae_per_step=(s["abs"] / n).tolist(),
        )


def skill(model_mse: float, baseline_mse: float) -> float:
    """Share of the baseline's MSE the model removes: 0.25 means 25% lower error."""
    return 1.0 - model_mse / baseline_mse if baseline_mse > 0 else float("nan")
