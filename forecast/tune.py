"""Hyperparameter search: one parent MLflow run per sweep, one nested child run per trial.

Trials are scored on the validation split only; the test split is never looked at while
choosing, so the chosen config's test score stays an honest estimate. The parent run gets
the best trial's params and validation metrics, so the MLflow UI's compare view lists the
sweep beside ordinary runs.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import mlflow
import optuna

from forecast.config import Config, Range, build_config, integer_setting, set_dotted
from forecast.data import SeriesSet, season_for
from forecast.errors import ConfigError, TrainingError
from forecast.evaluate import evaluate
from forecast.runner import load_data, train_model
from forecast.tracking import (
    artifact_store,
    close_run,
    ensure_experiment,
    log_epoch,
    params,
    preflight,
)
from forecast.train import EpochStats, resolve_device
from forecast.windows import prepare

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    number: int
    state: str  # complete, pruned, failed
    values: dict[str, Any]
    score: float
    run_id: str


@dataclass
class TuneResult:
    parent_run_id: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    seconds: float

    def table(self) -> str:
        lines = [f"{'trial':>5}  {'state':<9}{'val score':>10}  settings"]
        for t in self.trials:
            score = "" if math.isnan(t.score) else f"{t.score:.4f}"
            mark = " *" if self.best is not None and t.number == self.best.number else ""
            lines.append(f"{t.number:>5}  {t.state:<9}{score:>10}  {json.dumps(t.values)}{mark}")
        return "\n".join(lines)


def sample(trial: optuna.Trial, space: dict[str, list[Any] | Range],
           heads: int = 1) -> dict[str, Any]:
    """One trial's values. A `model.d_model` range draws a multiple of the trial's
    `model.n_heads` (`heads` when the space does not search it), the only widths that run."""
    values: dict[str, Any] = {}
    for key, choice in space.items():
        if isinstance(choice, list):
            values[key] = trial.suggest_categorical(key, choice)
        elif key == "model.d_model":
            continue  # below, once the trial's heads are known
        elif integer_setting(key):
            values[key] = trial.suggest_int(key, int(choice.low), int(choice.high),
                                            log=choice.log)
        else:
            values[key] = trial.suggest_float(key, choice.low, choice.high, log=choice.log)
    width = space.get("model.d_model")
    if isinstance(width, Range):
        # the multiple itself is drawn, so that each allowed width is equally likely (on the
        # range's scale) and the sampler learns from the width that was trained
        h = int(values.get("model.n_heads", heads))
        k = trial.suggest_int("model.d_model / n_heads", math.ceil(width.low / h),
                              math.floor(width.high / h), log=width.log)
        values["model.d_model"] = k * h
    return {key: values[key] for key in space}


def _head_choices(space: dict[str, list[Any] | Range], heads: int) -> list[int]:
    choice = space.get("model.n_heads")
    if choice is None:
        return [heads]
    if isinstance(choice, list):
        return [int(c) for c in choice]
    return list(range(math.ceil(choice.low), math.floor(choice.high) + 1))


def _whole(value: Any) -> bool:
    # a range's ends are floats: 2.0 is a head count as much as 2
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and float(value).is_integer())


def check_space(cfg: Config) -> None:
    """Refuse a space some of whose values make no valid config, before any trial runs."""
    space = cfg.tune.space
    searched = {"model.d_model", "model.n_heads"} & set(space)
    for key, choice in space.items():
        probe = choice if isinstance(choice, list) else [choice.low, choice.high]
        for value in probe:
            # each value is checked alone; the pairs of width and heads are checked below
            pair: dict[str, Any] = {}
            if key == "model.d_model" and (searched == {key, "model.n_heads"}
                                          or isinstance(choice, Range)):
                pair = {"model.n_heads": 1}
            elif key == "model.n_heads" and "model.d_model" in searched and _whole(value):
                pair = {"model.d_model": int(value)}
            trial_config(cfg, {key: value, **pair}, "scratch")
    # d_model must be a multiple of n_heads: a pair of choices can fail where neither alone does
    width = space.get("model.d_model", [cfg.model.d_model])
    config_s = {key: "" if key in space else "the config's "
                for key in ("model.d_model", "model.n_heads")}
    for h in _head_choices(space, cfg.model.n_heads):
        heads_named = f"{config_s['model.n_heads']}model.n_heads {h}"
        if isinstance(width, Range):
            if math.ceil(width.low / h) * h > width.high:
                raise ConfigError(f"tune.space: model.d_model's range [{width.low:g}, "
                                  f"{width.high:g}] holds no multiple of {heads_named}; widen "
                                  "it (widths are drawn as multiples of the heads)")
            continue
        for w in width:
            if w % h:
                raise ConfigError(f"tune.space: {config_s['model.d_model']}model.d_model {w} "
                                  f"with {heads_named} makes no model (d_model must be "
                                  "divisible by n_heads); choose widths and head counts that "
                                  "divide")


def trial_config(base: Config, values: dict[str, Any], checkpoints: str) -> Config:
    """The base config with a trial's values; checkpoints in a scratch folder, never resumed."""
    # the values themselves, not text to re-parse: a NaN came back as the string 'NaN'
    raw = base.to_dict()
    for key, value in {**values, "train.resume": False, "train.checkpoint_dir": checkpoints
                       }.items():
        set_dotted(raw, key.split("."), value, f"tune.space key {key!r}")
    return build_config(raw, "tune.space")


def _sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    tune = cfg.tune
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(
            {k: v for k, v in tune.space.items() if isinstance(v, list)}, seed=tune.seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    return optuna.samplers.TPESampler(seed=tune.seed)


class _Objective:
    def __init__(self, base: Config, series: SeriesSet, records: list[TrialRecord]) -> None:
        self.base, self.series, self.records = base, series, records

    def __call__(self, trial: optuna.Trial) -> float:
        values = sample(trial, self.base.tune.space, self.base.model.n_heads)
        metric = f"val_{self.base.tune.metric}"
        with tempfile.TemporaryDirectory() as scratch:
            run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True,
                                   tags={"tune.trial": str(trial.number)})
            record = TrialRecord(trial.number, "failed", values, math.nan, run.info.run_id)
            self.records.append(record)
            try:
                cfg = trial_config(self.base, values, scratch)
                mlflow.log_params(params(cfg))

                def on_epoch(stats: EpochStats) -> None:
                    log_epoch(stats)
                    trial.report(stats.val_loss, stats.epoch)
                    if cfg.tune.prune and trial.should_prune():
                        raise optuna.TrialPruned(f"val_loss {stats.val_loss:.4f} at epoch "
                                                 f"{stats.epoch} is behind earlier trials")

                trained = train_model(cfg, self.series, on_epoch)
                season = cfg.eval.season or season_for(self.series.freq)
                scores = evaluate(trained.model, trained.prepared, cfg.eval, season, "val",
                                  resolve_device(cfg.train)).metrics()
                mlflow.log_metrics({**scores, **trained.fit.metrics()})
            except optuna.TrialPruned as err:
                record.state = "pruned"
                mlflow.set_tags({"tune.state": "pruned", "tune.reason": str(err)})
                mlflow.end_run("FINISHED")
                raise
            except BaseException as err:
                interrupted = isinstance(err, KeyboardInterrupt)
                if not interrupted:
                    log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__,
                                str(err).splitlines()[0] if str(err) else "")
                close_run("KILLED" if interrupted else "FAILED", f"{type(err).__name__}: {err}")
                raise
            record.state, record.score = "complete", scores[metric]
            mlflow.set_tag("tune.state", "complete")
            mlflow.end_run("FINISHED")
            return record.score


def tune(cfg: Config, uri: str, trials: int | None = None,
         timeout_minutes: float | None = None) -> TuneResult:
    """Run the search of `cfg.tune` (trials and minutes from the arguments when given)."""
    n_trials = trials or cfg.tune.trials
    minutes = timeout_minutes if timeout_minutes is not None else cfg.tune.timeout_minutes
    check_space(cfg)
    if cfg.train.checkpoint_dir is not None:
        log.warning("train.checkpoint_dir is not used by a sweep: each trial checkpoints in a "
                    "scratch folder and never resumes")
    series = load_data(cfg)
    if not any(key.startswith(("windows.", "split.")) for key in cfg.tune.space):
        # windows that do not fit the data fail every trial alike: say so once, before any
        prepare(series, cfg.split, cfg.windows)
    preflight(uri, cfg.tracking.timeout_seconds)
    mlflow.set_tracking_uri(uri)
    ensure_experiment(uri, cfg.tracking.experiment)
    # Optuna warns with a whole traceback for each failed trial, on its own stderr handler
    # (plain text in a JSON log): each failure is logged here instead, in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    study = optuna.create_study(direction="minimize", sampler=_sampler(cfg),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    records: list[TrialRecord] = []
    started = time.perf_counter()
    parent = mlflow.start_run(run_name=f"{cfg.name}-tune-{datetime.now():%Y%m%d-%H%M%S}",
                              tags={"tune.sweep": "true", "tune.sampler": cfg.tune.sampler,
                                    "data.sha256": series.digest})
    try:
        with artifact_store():
            mlflow.log_dict(cfg.tune.model_dump(mode="json"), "tune.json")
        study.optimize(_Objective(cfg, series, records), n_trials=n_trials,
                       timeout=None if minutes is None else minutes * 60,
                       catch=(ConfigError, TrainingError))
        done = [r for r in records if r.state == "complete"]
        best = min(done, key=lambda r: r.score) if done else None
        states = [r.state for r in records]
        mlflow.log_metrics({"trials_complete": states.count("complete"),
                            "trials_pruned": states.count("pruned"),
                            "trials_failed": states.count("failed")})
        if best is not None:
            best_cfg = trial_config(cfg, best.values, "scratch")
            mlflow.log_params(params(best_cfg) | {"train.checkpoint_dir": "null",
                                                  "train.resume": "true"})
            child = mlflow.get_run(best.run_id).data.metrics
            mlflow.log_metrics({k: v for k, v in child.items() if k.startswith("val_")})
            mlflow.set_tags({"tune.best_run_id": best.run_id,
                             "tune.best_trial": str(best.number)})
    except BaseException as err:
        close_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                  f"{type(err).__name__}: {err}")
        raise
    if best is None:
        close_run("FAILED", f"no trial completed ({len(records)} tried)")
    else:
        mlflow.end_run("FINISHED")
    return TuneResult(parent.info.run_id, records, best, time.perf_counter() - started)
