"""`forecast backtest`: rolling-origin evaluation of a trained model, tracked in MLflow.

The saved model is scored as it is at every cutoff (`forecast.backtest`), beside the linear and
seasonal-naive baselines fitted and calibrated on the rows before the first cutoff. With
`refit`, the model is trained again at each cutoff from the rows up to it (its config's
validation length, then the cutoff), as one nested MLflow run per cutoff under the backtest's
run; each cutoff's baselines then come from the same rows.

Outputs: a CSV of scores per cutoff and forecaster, one per horizon step beside it
(<stem>_by_step.csv), and an MLflow run with the overall scores (model_mse, linear_wql, ...),
the series per cutoff (model_mse_by_cutoff at steps 1..N) and per step (model_mse_by_step at
steps 1..H), the CSVs as artifacts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from pandas.tseries.frequencies import to_offset

from forecast.backtest import (
    SCORES,
    BacktestResult,
    BacktestSums,
    Scored,
    cutoff_windows,
    fitted_baselines,
    plan_cutoffs,
    scaled_rows,
)
from forecast.config import Config, load_config
from forecast.data import SeriesSet, check_model_data
from forecast.errors import ConfigError
from forecast.evaluate import fit_linear_baseline
from forecast.intervals import calibrate
from forecast.outputs import saved_config
from forecast.paths import writable_file
from forecast.registry import ModelSource, load_model
from forecast.runner import calibrated_baselines, load_data, train_model
from forecast.scaling import Scaler
from forecast.tracking import (
    close_run,
    ensure_experiment,
    log_epoch,
    log_metric_series,
    preflight,
)
from forecast.windows import split_bounds

log = logging.getLogger(__name__)

# scores logged once per cutoff (the CSV holds them all)
PER_CUTOFF_METRICS = ("mse", "mae", "coverage_80", "coverage_95", "wql")


@dataclass
class BacktestOptions:
    model: str  # a model directory or models:/NAME@ALIAS, models:/NAME/VERSION
    cutoffs: int
    out: Path
    step: int | None = None  # time steps between cutoffs (default: the model's horizon)
    until: pd.Timestamp | None = None  # the last cutoff at or before this time
    config: str | None = None  # default: the config the model was trained with
    data: str | None = None  # overrides data.path
    overrides: tuple[str, ...] = ()
    refit: bool = False
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "forecast-backtest"


@dataclass
class BacktestOutcome:
    result: BacktestResult
    run_id: str
    csv: Path
    step_csv: Path
    seconds: float


def _config(options: BacktestOptions, run_id: str | None) -> Config:
    """The config the data is read with: --config, else the model's own (beside a model
    directory, or its training run's config.yaml artifact)."""
    overrides = list(options.overrides) + ([f"data.path={options.data}"] if options.data
                                           else [])
    if options.config:
        return load_config(options.config, overrides)
    source = ModelSource.parse(options.model)
    if source.is_local:
        return load_config(saved_config(Path(options.model).resolve()), overrides)
    if run_id is None:
        raise ConfigError(f"{options.model} has no training run to read its config from; "
                          "pass --config")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=tmp,
                tracking_uri=options.tracking_uri)
        except Exception as err:  # noqa: BLE001 - MLflow raises many kinds for a missing file
            raise ConfigError(f"could not read config.yaml of run {run_id} ({err}); pass "
                              "--config") from None
        return load_config(local, overrides)


def _truncated(series: SeriesSet, end: pd.Timestamp) -> SeriesSet:
    """Every series' rows up to `end`, inclusive."""
    keep = [int(stamps.searchsorted(end, side="right")) for stamps in series.timestamps]
    return SeriesSet(series.ids, [v[:n] for v, n in zip(series.values, keep, strict=True)],
                     [t[:n] for t, n in zip(series.timestamps, keep, strict=True)],
                     series.channels, series.freq, series.source, series.digest, [])


def run_backtest(options: BacktestOptions) -> BacktestOutcome:
    started = time.perf_counter()
    if options.cutoffs < 1:
        raise ConfigError("--cutoffs: give 1 or more")
    suffix = options.out.suffix.lower()
    if suffix != ".csv":
        raise ConfigError(f"--out {str(options.out)!r}: give a .csv file name")
    writable_file(options.out, "--out")
    step_csv = options.out.with_name(f"{options.out.stem}_by_step.csv")
    source = ModelSource.parse(options.model)
    if not source.is_local:
        preflight(options.tracking_uri, 30, create=False)
    model = load_model(source, options.tracking_uri)
    bundle = model.forecaster.bundle
    meta = bundle.meta
    cfg = _config(options, model.run_id)
    series = load_data(cfg)
    check_model_data(series, meta.channels, meta.freq, "backtest")
    L, H = meta.lookback, meta.horizon
    step = options.step or H
    cutoffs = plan_cutoffs(series, options.cutoffs, step, L, H, options.until)
    season = cfg.eval.season or meta.season

    mlflow.set_tracking_uri(options.tracking_uri)
    experiment = ensure_experiment(options.tracking_uri, options.experiment)
    run = mlflow.start_run(experiment_id=experiment.experiment_id,
                           run_name=f"backtest-{model.name}-{model.version}",
                           tags={"forecast.kind": "backtest", "model.uri": options.model,
                                 "model.version": model.version})
    try:
        mlflow.log_params({"model": options.model, "model_version": model.version,
                           "cutoffs": options.cutoffs, "step": step, "refit": options.refit,
                           "first_cutoff": str(cutoffs[0]), "last_cutoff": str(cutoffs[-1]),
                           "lookback": L, "horizon": H, "data": series.source,
                           "season": season})
        sums = BacktestSums(cutoffs, H, len(meta.channels))
        if options.refit:
            _refit(cfg, series, cutoffs, step, season, sums)
        else:
            scaler = Scaler(bundle.mean, bundle.scale)
            data, offsets = scaled_rows(series, scaler)
            cut = cutoff_windows(series, data, offsets, cutoffs, step, L, H)
            sums.count_windows(cut)
            forecasters = {"model": Scored(bundle.model.eval(), bundle.calibration),
                           **fitted_baselines(series, data, offsets, cutoffs[0], L, H, season,
                                              cfg.eval.linear_max_windows)}
            for name, scored in forecasters.items():
                log.info("scoring %s at %d cutoffs (%d windows)", name, len(cutoffs),
                         len(cut.windows))
                sums.add(name, scored, cut, season, scaler.mean, scaler.scale)
        result = sums.result()
        result.cutoff_frame().to_csv(options.out, index=False)
        result.step_frame().to_csv(step_csv, index=False)
        _log_result(result)
        mlflow.log_artifact(str(options.out))
        mlflow.log_artifact(str(step_csv))
    except BaseException as err:
        close_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                  f"{type(err).__name__}: {err}")
        raise
    mlflow.end_run("FINISHED")
    return BacktestOutcome(result, run.info.run_id, options.out, step_csv,
                           time.perf_counter() - started)


def _log_result(result: BacktestResult) -> None:
    mlflow.log_metrics({f"{name}_{k}": v for name, scores in result.overall.items()
                        for k, v in scores.items() if k in SCORES}, step=0)
    log_metric_series({f"{name}_{k}_by_cutoff": v for name, scores in result.by_cutoff.items()
                       for k, v in scores.items() if k in PER_CUTOFF_METRICS})
    log_metric_series({f"{name}_{k}_by_step": v for name, scores in result.by_step.items()
                       for k, v in scores.items() if k in SCORES})
    log_metric_series({"windows_by_cutoff": result.windows.astype(float)})


def _refit(cfg: Config, series: SeriesSet, cutoffs: pd.DatetimeIndex, step: int, season: int,
           sums: BacktestSums) -> None:
    """Train at every cutoff as a nested run, and score that cutoff's windows."""
    first = split_bounds(series.timestamps[0], cfg.split)
    val_steps = first.val - first.train
    if val_steps < cfg.windows.horizon:
        raise ConfigError(f"the config's validation split holds {val_steps} steps, fewer than "
                          f"the horizon ({cfg.windows.horizon}); --refit trains with it")
    freq = to_offset(series.freq)
    L, H = cfg.windows.lookback, cfg.windows.horizon
    # the cutoffs' checkpoints go to a folder of their own, not the model's output_dir
    with tempfile.TemporaryDirectory(prefix="forecast-backtest-") as checkpoints:
        for i, cutoff in enumerate(cutoffs):
            ends = {"train": cutoff + freq * (1 - val_steps), "val": cutoff + freq,
                    "test": cutoff + freq * (H + 1)}
            cfg_i = cfg.model_copy(update={
                "split": cfg.split.model_copy(update={
                    "by": "dates", **{k: v.isoformat() for k, v in ends.items()}}),
                "train": cfg.train.model_copy(update={
                    "checkpoint_dir": str(Path(checkpoints) / str(i))})})
            with mlflow.start_run(run_name=f"cutoff-{i + 1}", nested=True,
                                  tags={"backtest.cutoff": str(cutoff)}):
                mlflow.log_params({"cutoff": str(cutoff), "train_end": str(ends["train"])})
                try:
                    trained = train_model(cfg_i, _truncated(series, cutoff + freq * H),
                                          log_epoch)
                except ConfigError as err:  # its fix (a longer split.train) is no fix here
                    raise ConfigError(f"--refit at cutoff {cutoff}: {str(err).split('; ')[0]} "
                                      "before it; backtest fewer or later cutoffs") from None
                prepared = trained.prepared
                model = trained.model.cpu().eval()
                linear = fit_linear_baseline(prepared, cfg.eval)
                forecasters = {"model": Scored(model, calibrate(model, prepared.windows("val"))),
                               **{name: Scored(f, c) for name, (f, c) in
                                  calibrated_baselines(prepared, linear, season).items()}}
                cut = cutoff_windows(prepared.series, prepared.data, prepared.offsets, cutoffs,
                                     step, L, H, only=i)
                sums.count_windows(cut)
                mean, scale = prepared.scaler.mean, prepared.scaler.scale
                for name, scored in forecasters.items():
                    sums.add(name, scored, cut, season, mean, scale)
                mlflow.log_metrics({f"{name}_{k}": v for name, scores
                                    in sums.cutoff_scores(i).items() for k, v in scores.items()
                                    if k in SCORES}, step=0)
            log.info("cutoff %d/%d (%s) trained and scored", i + 1, len(cutoffs), cutoff)
