"""Score the Transformer and the baselines on the very same windows of one block."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from forecast.baselines import LinearBaseline, naive, seasonal_naive
from forecast.config import EvalConfig
from forecast.metrics import MetricAccumulator, Scores, mase_scale, skill
from forecast.model import PatchTransformer
from forecast.windows import Prepared

BASELINES = ("naive", "seasonal_naive", "linear")

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    block: str
    season: int
    model: Scores
    baselines: dict[str, Scores]

    def metrics(self) -> dict[str, float]:
        """Flat names shared by every run: test_mse, baseline_naive_mse, skill_naive, ...; on
        another block the baselines and skills carry its name too (val_baseline_naive_mse), so
        that a sweep's validation scores never pass for a training run's test scores."""
        out = self.model.as_metrics(f"{self.block}_")
        block = "" if self.block == "test" else f"{self.block}_"  # test's names came first
        for name, scores in self.baselines.items():
            out.update(scores.as_metrics(f"{block}baseline_{name}_"))
            if scores.mse > 0:  # a perfect baseline leaves no share to remove: no skill
                out[f"{block}skill_{name}"] = skill(self.model.mse, scores.mse)
        return out

    def table(self) -> str:
        rows = [("transformer", self.model), *self.baselines.items()]
        head = f"{'model':<16}{'MSE':>9}{'MAE':>9}{'MAE(orig)':>11}{'RMSE(orig)':>12}" \
               f"{'MASE':>8}{'sMAPE%':>8}{'skill':>12}"
        lines = [head, "-" * len(head)]
        for name, s in rows:
            sk = "" if name == "transformer" else "n/a" if s.mse <= 0 else \
                f"{100 * skill(self.model.mse, s.mse):+.1f}%"
            lines.append(f"{name:<16}{s.mse:>9.4f}{s.mae:>9.4f}{s.mae_orig:>11.4f}"
                         f"{s.rmse_orig:>12.4f}{s.mase:>8.3f}{s.smape:>8.2f} {sk:>11}")
        lines.append(f"{self.model.windows} {self.block} windows scored; skill = share of the "
                     "baseline's MSE the transformer removes (n/a: the baseline's MSE is 0)")
        return "\n".join(lines)


def fit_linear_baseline(prepared: Prepared, cfg: EvalConfig) -> LinearBaseline:
    return LinearBaseline().fit(prepared.windows("train"), cfg.linear_max_windows)


@torch.inference_mode()
def evaluate(model: PatchTransformer, prepared: Prepared, cfg: EvalConfig, season: int,
             block: str = "test", device: torch.device | None = None,
             linear: LinearBaseline | None = None) -> Evaluation:
    """Score the model and the baselines on `block`'s windows. `linear`: the Ridge baseline
    already fitted on the training windows (scoring two blocks fits it once)."""
    device = device or next(model.parameters()).device
    model.eval()
    windows = prepared.windows(block)
    scaler = prepared.scaler
    train_rows = prepared.train_rows()
    if season >= len(train_rows):
        log.warning("MASE is scaled by one-step differences, not seasonal ones: the season (%d "
                    "steps, eval.season or the frequency's) is not shorter than the %d training "
                    "rows; set eval.season below %d", season, len(train_rows), len(train_rows))
    denom = mase_scale(train_rows, season)
    H = prepared.horizon

    def accumulator() -> MetricAccumulator:
        return MetricAccumulator(H, scaler.mean, scaler.scale, denom)

    acc = {"transformer": accumulator(), **{b: accumulator() for b in BASELINES}}
    linear = linear or fit_linear_baseline(prepared, cfg)
    use_seasonal = season <= prepared.lookback
    for x, y in windows.batches(cfg.batch_size):
        pred = model(x.to(device)).float().cpu()
        acc["transformer"].update(pred, y)
        acc["naive"].update(naive(x, H), y)
        if use_seasonal:
            acc["seasonal_naive"].update(seasonal_naive(x, H, season), y)
        acc["linear"].update(linear(x), y)
    baselines = {b: acc[b].result() for b in BASELINES if b != "seasonal_naive" or use_seasonal}
    return Evaluation(block, season, acc["transformer"].result(), baselines)
