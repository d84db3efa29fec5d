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

from forecast.baselines import LinearBaseline
from forecast.config import (
    Config,
    Range,
    build_config,
    dump_config,
    integer_setting,
    set_dotted,
)
from forecast.config.search import SKIP_CHOICES, SKIP_KEY
from forecast.data import SeriesSet, season_for
from forecast.errors import ConfigError, TrainingError
from forecast.evaluate import evaluate, fit_linear_baseline
from forecast.runner import Trained, load_data, train_model
from forecast.skip_fit import SkipSolutions
from forecast.tracking import (
    artifact_store,
    close_run,
    ensure_experiment,
    log_epoch,
    params,
    preflight,
)
from forecast.train import EpochStats, resolve_device
from forecast.windows import prepare, split_bounds

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
    config: Config | None = None  # the base config with the best trial's values
    space_reason: str | None = None  # how the space was chosen from the data, if it was

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


# lookback candidates: these many seasons of history, within what the data allows
LOOKBACK_SEASONS = (4, 7, 14)
LOOKBACK_CAP = 720  # steps; longer ones cost more than they were seen to give
SHORT_SEASON_LOOKBACKS = (48, 96, 192)  # when the frequency says little (season < 4 steps)


@dataclass
class Space:
    """What a sweep searches, and in words why (for the data's own choices)."""

    keys: dict[str, list[Any] | Range]
    reason: str | None = None


def lookback_candidates(season: int, train_rows: int, patch_len: int) -> list[int]:
    """A few seasons of history (4, 7 and 14: a day's season gives 4 days, a week and two
    weeks), each leaving at least three quarters of the training rows to targets, and at
    least two patches long."""
    picks = [k * season for k in LOOKBACK_SEASONS] if season >= 4 else \
        list(SHORT_SEASON_LOOKBACKS)
    cap = min(LOOKBACK_CAP, train_rows // 4)
    fitting = sorted({min(p, cap) for p in picks if min(p, cap) >= 2 * patch_len})
    if not fitting:
        raise ConfigError(f"the {train_rows} training rows leave no lookback to search "
                          f"(at most {cap} steps, at least 2 x model.patch_len "
                          f"{patch_len}); give tune.space with windows.lookback, or more data")
    return fitting


def data_space(cfg: Config, series: SeriesSet) -> Space:
    """The default search on new data: the lookback from its frequency and length, the skip
    off / least squares / robust, the width, the learning rate and dropout."""
    season = cfg.eval.season or season_for(series.freq)
    train_rows = min(split_bounds(stamps, cfg.split).train for stamps in series.timestamps)
    lookbacks = lookback_candidates(season, train_rows, cfg.model.patch_len)
    keys: dict[str, list[Any] | Range] = {
        "windows.lookback": lookbacks,
        SKIP_KEY: list(SKIP_CHOICES),
        "model.d_model": [16, 32, 64],
        "train.lr": Range(low=1e-4, high=3e-3, log=True),
        "model.dropout": Range(low=0.0, high=0.3),
    }
    return Space(keys, f"lookback candidates {lookbacks} ({series.freq} data: season "
                       f"{season} steps, {train_rows} training rows)")


def check_space(cfg: Config) -> None:
    """Refuse a space some of whose values make no valid config, before any trial runs."""
    space = cfg.tune.space
    if space is None:
        return  # chosen from the data, valid by construction
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


def settings(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as config settings: `model.skip` becomes the settings it names."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(SKIP_CHOICES[value] if key == SKIP_KEY else {key: value})
    return out


def tuned_config(base: Config, values: dict[str, Any]) -> Config:
    """The base config with a trial's values: what the sweep recommends training."""
    # the values themselves, not text to re-parse: a NaN came back as the string 'NaN'
    raw = base.to_dict()
    for key, value in settings(values).items():
        set_dotted(raw, key.split("."), value, f"tune.space key {key!r}")
    return build_config(raw, "tune.space")


def trial_config(base: Config, values: dict[str, Any], checkpoints: str) -> Config:
    """A trial's config: checkpoints in a scratch folder, never resumed, and at most
    tune.trial_windows_per_epoch windows an epoch."""
    train: dict[str, Any] = {"train.resume": False, "train.checkpoint_dir": checkpoints}
    cap, given = base.tune.trial_windows_per_epoch, base.train.max_windows_per_epoch
    if cap is not None and (given is None or given > cap):
        train["train.max_windows_per_epoch"] = cap
    return tuned_config(base, {**values, **train})


def _sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    tune = cfg.tune
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(
            {k: v for k, v in tune.space.items() if isinstance(v, list)}, seed=tune.seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    return optuna.samplers.TPESampler(seed=tune.seed)


class _Objective:
    def __init__(self, base: Config, series: SeriesSet, space: dict[str, list[Any] | Range],
                 records: list[TrialRecord], deadline: float) -> None:
        self.base, self.series, self.space = base, series, space
        self.records, self.deadline = records, deadline
        # the longest a trial has taken to finish its first epoch (the skip's solve included)
        self.first_epoch_s = 0.0
        # what trials sharing windows share: least-squares skips, and Ridge baselines by their
        # windows (the trials differ in the encoder and its training only)
        self.skips = SkipSolutions()
        self.ridges: dict[str, LinearBaseline] = {}

    def __call__(self, trial: optuna.Trial) -> float:
        if self.deadline - time.monotonic() < self.first_epoch_s:
            # a trial started now could not score one epoch within the budget: end the search
            # here rather than overrun it (Optuna's timeout only stops trials from starting)
            trial.study.stop()
            raise optuna.TrialPruned("too little budget left for one epoch")
        started = time.monotonic()
        values = sample(trial, self.space, self.base.model.n_heads)
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
                    if stats.epoch == 1:
                        self.first_epoch_s = max(self.first_epoch_s,
                                                 time.monotonic() - started)
                    trial.report(stats.val_loss, stats.epoch)
                    if cfg.tune.prune and trial.should_prune():
                        raise optuna.TrialPruned(f"val_loss {stats.val_loss:.4f} at epoch "
                                                 f"{stats.epoch} is behind earlier trials")

                def spent() -> str | None:
                    return "the budget ran out" if time.monotonic() > self.deadline else None

                trained = train_model(cfg, self.series, on_epoch, spent, self.skips)
                fit = trained.fit
                if fit.stopped and not math.isfinite(fit.best_val_loss):
                    raise optuna.TrialPruned(f"{fit.stopped}, before any score")
                if fit.stopped and validated_by(cfg) == cfg.tune.metric:
                    # the budget is spent: the kept epoch's validation score is the trial's
                    # score already, and scoring the baselines too would overrun the budget
                    scores = {metric: fit.best_val_loss}
                else:
                    scores = self.score(cfg, trained)
                mlflow.log_metrics({**scores, **fit.metrics()})
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
            mlflow.set_tags({"tune.state": "complete", **(
                {"tune.reason": f"{fit.stopped}: scored at its best epoch"}
                if fit.stopped else {})})
            mlflow.end_run("FINISHED")
            return record.score


    def score(self, cfg: Config, trained: Trained) -> dict[str, float]:
        """The trial's validation metrics and its skill over the baselines."""
        season = cfg.eval.season or season_for(self.series.freq)
        windows = json.dumps([cfg.windows.model_dump(mode="json"),
                              cfg.split.model_dump(mode="json"),
                              cfg.eval.model_dump(mode="json")], sort_keys=True)
        if windows not in self.ridges:
            self.ridges[windows] = fit_linear_baseline(trained.prepared, cfg.eval)
        return evaluate(trained.model, trained.prepared, cfg.eval, season, "val",
                        resolve_device(cfg.train), self.ridges[windows]).metrics()


def validated_by(cfg: Config) -> str:
    """The metric training keeps its best epoch by (train.val_metric, the loss for 'loss')."""
    return cfg.train.loss if cfg.train.val_metric == "loss" else cfg.train.val_metric


def tune(cfg: Config, uri: str, trials: int | None = None,
         budget_minutes: float | None = None) -> TuneResult:
    """Run the search of `cfg.tune` (trials and budget from the arguments when given)."""
    n_trials = trials or cfg.tune.trials
    minutes = budget_minutes if budget_minutes is not None else cfg.tune.budget_minutes
    started = time.perf_counter()
    deadline = math.inf if minutes is None else time.monotonic() + minutes * 60
    check_space(cfg)
    if cfg.train.checkpoint_dir is not None:
        log.warning("train.checkpoint_dir is not used by a sweep: each trial checkpoints in a "
                    "scratch folder and never resumes")
    series = load_data(cfg)
    space = Space(cfg.tune.space) if cfg.tune.space is not None else data_space(cfg, series)
    if space.reason:
        log.info("searching %s; %s", ", ".join(space.keys), space.reason)
    if not any(key.startswith(("windows.", "split.")) for key in space.keys):
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
    parent = mlflow.start_run(run_name=f"{cfg.name}-tune-{datetime.now():%Y%m%d-%H%M%S}",
                              tags={"tune.sweep": "true", "tune.sampler": cfg.tune.sampler,
                                    "data.sha256": series.digest,
                                    **({"tune.space_reason": space.reason}
                                       if space.reason else {})})
    best_cfg = None
    try:
        with artifact_store():
            mlflow.log_dict({**cfg.tune.model_dump(mode="json"),
                             "space": {k: v if isinstance(v, list) else v.model_dump()
                                       for k, v in space.keys.items()}}, "tune.json")
        study.optimize(_Objective(cfg, series, space.keys, records, deadline),
                       n_trials=n_trials,
                       timeout=None if minutes is None else max(deadline - time.monotonic(), 0),
                       catch=(ConfigError, TrainingError))
        done = [r for r in records if r.state == "complete"]
        best = min(done, key=lambda r: r.score) if done else None
        states = [r.state for r in records]
        mlflow.log_metrics({"trials_complete": states.count("complete"),
                            "trials_pruned": states.count("pruned"),
                            "trials_failed": states.count("failed")})
        if best is not None:
            best_cfg = tuned_config(cfg, best.values)
            mlflow.log_params(params(best_cfg))
            with artifact_store():
                mlflow.log_text(dump_config(best_cfg), "tuned_config.yaml")
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
    return TuneResult(parent.info.run_id, records, best, time.perf_counter() - started,
                      best_cfg, space.reason)
