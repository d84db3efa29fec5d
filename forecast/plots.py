"""Run artifacts as pictures and tables: forecasts against actuals, error per horizon step,
and the training curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window on a server

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from forecast.evaluate import Evaluation  # noqa: E402
from forecast.intervals import Calibration, interval_quantiles, spread  # noqa: E402
from forecast.model import PatchTransformer  # noqa: E402
from forecast.train import EpochStats  # noqa: E402
from forecast.windows import Prepared  # noqa: E402


def forecast_vs_actual(model: PatchTransformer, prepared: Prepared, path: Path,
                       n_windows: int = 3, max_channels: int = 3,
                       calibration: Calibration | None = None, coverage: float = 0.8) -> Path:
    """A grid: rows are test windows spread over the block, columns are channels; with a
    calibration, the central `coverage` interval as a band around the forecast."""
    test = prepared.windows("test")
    k = torch.linspace(0, len(test) - 1, n_windows).long()
    x, y = test.gather(k)
    with torch.inference_mode():
        pred = model.eval()(x)
    band = None
    if calibration is not None and calibration.gives(coverage):
        scores = calibration.score_quantiles(interval_quantiles([coverage]))  # [2 x H x C]
        width = spread(x).numpy()[:, None, :]  # [B x 1 x C], scaled units
        band = [pred.numpy() + width * s[None] for s in scores]
    mean, scale = prepared.scaler.mean, prepared.scaler.scale
    x, y, pred = (t.numpy() * scale + mean for t in (x, y, pred))
    if band is not None:
        band = [b * scale + mean for b in band]
    C = min(prepared.n_channels, max_channels)
    L, H = prepared.lookback, prepared.horizon
    fig, axes = plt.subplots(n_windows, C, figsize=(4 * C, 2.4 * n_windows), squeeze=False)
    for i in range(n_windows):
        for c in range(C):
            ax = axes[i][c]
            ax.plot(np.arange(L), x[i, :, c], color="0.5", lw=0.8, label="history")
            ax.plot(np.arange(L, L + H), y[i, :, c], color="k", lw=1.0, label="actual")
            ax.plot(np.arange(L, L + H), pred[i, :, c], color="tab:red", lw=1.0, label="forecast")
            if band is not None:
                ax.fill_between(np.arange(L, L + H), band[0][i, :, c], band[1][i, :, c],
                                color="tab:red", alpha=0.2, lw=0,
                                label=f"{coverage:.0%} interval")
            ax.set_title(f"{prepared.series.channels[c]}, test window {int(k[i])}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def horizon_errors(evaluation: Evaluation, csv_path: Path, png_path: Path,
                   intervals: dict[str, np.ndarray] | None = None) -> tuple[Path, Path]:
    """MSE and MAE per horizon step for the model and each baseline, and the model's interval
    scores per step (`intervals`: coverage_80 → [H], ...) as transformer_coverage_80, ..."""
    rows = {"step": np.arange(1, len(evaluation.model.mse_per_step) + 1)}
    for name, s in [("transformer", evaluation.model), *evaluation.baselines.items()]:
        rows[f"{name}_mse"] = s.mse_per_step
        rows[f"{name}_mae"] = s.mae_per_step
    rows |= {f"transformer_{k}": v for k, v in (intervals or {}).items()}
    table = pd.DataFrame(rows)
    table.to_csv(csv_path, index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ["transformer", *evaluation.baselines]:
        ax.plot(table["step"], table[f"{name}_mse"], label=name)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MSE (scaled)")
    ax.set_title(f"{evaluation.block} error per horizon step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return csv_path, png_path


def curve_labels(loss: str, val_metric: str) -> tuple[str, str]:
    """Legend labels for the training and validation curves: validation is scored by
    train.val_metric, which is the training loss only when it is 'loss'."""
    val = loss if val_metric == "loss" else val_metric
    return f"train loss ({loss})", f"validation {val}"


def training_curve(history: list[EpochStats], path: Path, loss: str, val_metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h.epoch for h in history]
    train_label, val_label = curve_labels(loss, val_metric)
    ax.plot(epochs, [h.train_loss for h in history], marker="o", label=train_label)
    ax.plot(epochs, [h.val_loss for h in history], marker="o", label=val_label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
