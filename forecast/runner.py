"""One configuration end to end: load → split/window → build → train → evaluate → save."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from forecast import outputs
from forecast.baselines import LinearBaseline, seasonal_naive
from forecast.bundle import Bundle, BundleMeta, save_bundle
from forecast.config import Config, dump_config
from forecast.data import SeriesSet, frame_to_series, load_series, season_for
from forecast.distributed import Dist, Stop, await_start
from forecast.errors import DataError, TrainingError, first_line
from forecast.evaluate import Evaluation, evaluate, fit_linear_baseline
from forecast.intervals import Calibration, calibrate, interval_scores
from forecast.model import PatchTransformer, build_model
from forecast.paths import writable_dir
from forecast.skip_fit import SkipSolutions
from forecast.synthetic import synthetic_frame
from forecast.train import EpochStats, FitResult, fit, resolve_device, seed_everything
from forecast.windows import Prepared, prepare

log = logging.getLogger(__name__)

# Settings that change how a run is shown, logged, scheduled or resumed, not what it computes.
_NOT_IN_RUN_KEY = ("train.progress", "train.resume", "train.checkpoint_dir", "output_dir",
                   "tracking.", "pipeline.", "tune.")


@dataclass
class TrainOutcome:
    config: Config
    series: SeriesSet
    prepared: Prepared
    model: PatchTransformer
    fit: FitResult
    evaluation: Evaluation  # the test block
    validation: Evaluation  # the validation block, the same model and baselines
    output_dir: Path
    model_dir: Path
    intervals: dict[str, float]  # the test block's interval coverage and width
    calibration: Calibration | None = None  # the intervals' calibration, saved in the bundle
    # the test block's interval scores per horizon step: coverage_80 → [H], ...
    intervals_per_step: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """Test scores (test_mse, skill_linear, test_coverage_80, ...) and validation's
        (val_mse, val_skill_linear, ...)."""
        return {**self.validation.metrics(), **self.evaluation.metrics(),
                **{f"test_{k}": v for k, v in self.intervals.items()}}

    @property
    def linear_only(self) -> bool | None:
        """Whether validation kept the least-squares linear forecast alone ("epoch 0"): the
        head is then zero and the encoder adds nothing. None when the skip is not solved by
        least squares (every epoch then trains the whole model)."""
        if self.fit.linear_val_loss is None:
            return None
        return self.fit.best_epoch == 0


def publish(outcome: TrainOutcome) -> TrainOutcome:
    """Move a staged run's files over <output_dir>/<name>, replacing the previous run's.

    Until this is called the previous model/ stays whole, so a run that fails after training
    (logging, packaging, registration) cannot leave a model on disk that no run vouches for."""
    final = run_dir(outcome.config)
    if outcome.output_dir != final:
        outputs.publish(outcome.output_dir, final)
        outcome.output_dir, outcome.model_dir = final, final / outputs.MODEL
    return outcome


def discard(outcome: TrainOutcome) -> None:
    """Remove a staged run's files (its run failed), leaving <output_dir>/<name> as it was."""
    if outcome.output_dir != run_dir(outcome.config):
        outputs.discard(outcome.output_dir)


def load_data(cfg: Config) -> SeriesSet:
    """The configured file, or the built-in synthetic series when data.path is null."""
    if cfg.data.path is not None:
        return load_series(cfg.data)
    frame = synthetic_frame(seed=cfg.train.seed)
    series = frame_to_series(frame, cfg.data, source="synthetic demo series")
    series.digest = hashlib.sha256(np.ascontiguousarray(frame.iloc[:, 1:].to_numpy())).hexdigest()
    return series


def config_digest(cfg: Config) -> str:
    """sha256 of the settings that change what a run computes (not where it logs or writes)."""
    relevant = {k: v for k, v in cfg.flat().items() if not k.startswith(_NOT_IN_RUN_KEY)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def run_key(cfg: Config, data_digest: str) -> str:
    """Identity of a training run: same config and same data bytes give the same key."""
    return hashlib.sha256((config_digest(cfg) + data_digest).encode()).hexdigest()


def checkpoint_dir(cfg: Config) -> Path:
    given = cfg.train.checkpoint_dir
    return Path(given) if given else run_dir(cfg) / "checkpoints"


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.name


@dataclass
class Trained:
    prepared: Prepared
    model: PatchTransformer
    fit: FitResult


def skip_key(cfg: Config) -> str:
    """What a least-squares skip and its validation loss depend on, the data aside: the
    windows and split, the skip's own settings, and the padding, seed and loss of training."""
    m, t = cfg.model, cfg.train
    return json.dumps({
        "windows": cfg.windows.model_dump(mode="json"), "split": cfg.split.model_dump(mode="json"),
        "model": {"shortest_history": m.shortest_history, **m.model_dump(
            mode="json", include={"revin", "skip_level", "skip_per_channel", "skip_huber_delta",
                                  "skip_rank"})},
        "train": t.model_dump(mode="json", include={"pad_augment", "seed", "loss", "val_metric",
                                                    "huber_delta"}),
    }, sort_keys=True)


def train_model(cfg: Config, series: SeriesSet,
                on_epoch: Callable[[EpochStats], None] | None = None,
                stop: Callable[[], str | None] | None = None,
                skips: SkipSolutions | None = None) -> Trained:
    """Split, window, build and fit (resuming from a checkpoint of the same run key); `stop`
    as `fit` takes it; `skips`: least-squares skips to reuse and keep, for calls on the same
    series (a search's trials)."""
    prepared = prepare(series, cfg.split, cfg.windows)
    seed_everything(cfg.train.seed)
    try:
        model = build_model(cfg.model, cfg.windows.lookback, cfg.windows.horizon,
                            prepared.n_channels)
        log.info("training on %d train / %d val windows, %d parameters",
                 len(prepared.windows("train")), len(prepared.windows("val")), model.n_params())
        result = fit(model, prepared, cfg.train, checkpoint_dir(cfg),
                     run_key(cfg, series.digest), on_epoch, stop,
                     skips.slot(skip_key(cfg)) if skips is not None else None)
    except (MemoryError, RuntimeError) as err:
        # torch's CPU allocator raises a RuntimeError (CUDA's OutOfMemoryError is one too)
        first = first_line(err)
        if not isinstance(err, MemoryError) and not any(
                sign in first for sign in ("allocate", "out of memory", "ALLOC_FAILED")):
            raise
        raise TrainingError(f"out of memory building or training the model ({first}); lower "
                            "model.d_model, model.d_ff, model.n_layers, windows.lookback or "
                            "train.batch_size") from None
    return Trained(prepared, model, result)


def follow(cfg: Config, dist: Dist) -> None:
    """A rank other than 0: train in step with rank 0 once it says so, writing nothing (rank 0
    alone tracks, checkpoints, scores and saves)."""
    word = await_start(dist)
    if isinstance(word, Stop):
        log.info("rank %d: rank 0 stopped before training (%s)", dist.rank,
                 word.error or "nothing to train")
        return
    series = load_data(cfg)
    if series.digest != word.data_digest:
        raise DataError(f"data.path: rank {dist.rank} read other data than rank 0 (sha256 "
                        f"{series.digest[:12]}… against {word.data_digest[:12]}…); every rank "
                        "must read the same file")
    train_model(cfg, series)


def calibrated_baselines(prepared: Prepared, linear: LinearBaseline, season: int
                         ) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                              Calibration]]:
    """The linear and seasonal-naive forecasts, each with split-conformal intervals of its own
    calibrated on the validation windows as the model's are."""
    H = prepared.horizon
    forecasts: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"linear": linear}
    if season <= prepared.lookback:  # as evaluate: a season longer than the lookback has none
        forecasts["seasonal_naive"] = lambda x: seasonal_naive(x, H, season)
    return {name: (forecast, calibrate(forecast, prepared.windows("val")))
            for name, forecast in forecasts.items()}


def baseline_intervals(prepared: Prepared, linear: LinearBaseline, season: int
                       ) -> dict[str, float]:
    """The calibrated baselines scored on the model's test windows: linear_wql,
    seasonal_naive_coverage_80, ..."""
    out = {}
    for name, (forecast, calibration) in calibrated_baselines(prepared, linear, season).items():
        scores = interval_scores(forecast, calibration, prepared.windows("test"), season=season,
                                 mean=prepared.scaler.mean, scale=prepared.scaler.scale)
        out |= {f"{name}_{k}": v for k, v in scores.overall.items()}
    return out


def train_and_evaluate(
    cfg: Config, series: SeriesSet | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None, staged: bool = False,
) -> TrainOutcome:
    """Train and score one configuration and write its model, config and metrics.

    staged=True writes them to a fresh folder inside <output_dir>/<name> for the caller to
    `publish` once the run has succeeded, or `discard`; otherwise they replace the last run's."""
    series = series if series is not None else load_data(cfg)
    writable_dir(run_dir(cfg), "output_dir")  # before training, not after it
    writable_dir(checkpoint_dir(cfg), "train.checkpoint_dir" if cfg.train.checkpoint_dir
                 else "output_dir")
    trained = train_model(cfg, series, on_epoch)
    model, prepared, result = trained.model, trained.prepared, trained.fit
    season = cfg.eval.season or season_for(series.freq)
    log.info("kept epoch %d (val_loss %.4f); scoring the validation and test blocks",
             result.best_epoch, result.best_val_loss)
    device, linear = resolve_device(cfg.train), fit_linear_baseline(prepared, cfg.eval)
    # validation against the baselines is what the gate may act on; test is only reported
    validation = evaluate(model, prepared, cfg.eval, season, "val", device, linear)
    evaluation = evaluate(model, prepared, cfg.eval, season, "test", device, linear)
    # the intervals are calibrated on validation, once, and scored on test
    calibration = calibrate(model, prepared.windows("val"))
    scored = interval_scores(model, calibration, prepared.windows("test"), season=season,
                             mean=prepared.scaler.mean, scale=prepared.scaler.scale)
    intervals = scored.overall | baseline_intervals(prepared, linear, season)
    if "wql" in intervals:
        log.info("test weighted quantile loss: model %.4f, %s", intervals["wql"], ", ".join(
            f"{name.replace('_', ' ')} {intervals[f'{name}_wql']:.4f}"
            for name in ("linear", "seasonal_naive") if f"{name}_wql" in intervals))
    log.info("intervals calibrated on %d validation windows; test coverage: %s",
             calibration.windows, ", ".join(f"{v:.3f} ({k.split('_')[1]}%)"
                                            for k, v in intervals.items()
                                            if k.startswith("coverage_")) or "none")
    model.cpu()
    out = run_dir(cfg)
    meta = BundleMeta(
        name=cfg.name, lookback=cfg.windows.lookback, horizon=cfg.windows.horizon,
        channels=series.channels, freq=series.freq, model=cfg.model.model_dump(mode="json"),
        timestamp_column=cfg.data.timestamp_column, id_column=cfg.data.id_column, season=season,
        metrics={**evaluation.metrics(), **{f"test_{k}": v for k, v in intervals.items()}},
    )
    scaler = prepared.scaler
    staging = outputs.stage(out)
    outcome = TrainOutcome(cfg, series, prepared, model, result, evaluation, validation,
                           staging, staging / outputs.MODEL, intervals, calibration,
                           scored.per_step)
    try:
        save_bundle(outcome.model_dir,
                    Bundle(model, scaler.mean, scaler.scale, meta, calibration))
        (staging / "config.yaml").write_text(dump_config(cfg))
        (staging / "metrics.json").write_text(json.dumps(
            {**outcome.metrics, **result.metrics(), "params": model.n_params()}, indent=2))
        return outcome if staged else publish(outcome)
    except BaseException:
        discard(outcome)
        raise
