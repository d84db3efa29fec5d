"""Every training run tracked in MLflow: params, per-epoch metrics, test metrics against the
baselines, tags, the dataset, artifacts, the pyfunc model, registration and the gate.

A run that raises ends FAILED (Ctrl-C: KILLED) with the error in the `error` tag, and nothing
is registered. The tracking store is checked before training starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from forecast.bundle import load_bundle
from forecast.config import Config, TrackingConfig, dump_config
from forecast.data import SeriesSet
from forecast.errors import ConfigError, TrackingError, first_line
from forecast.packaging import log_pyfunc
from forecast.paths import exclusive
from forecast.plots import forecast_vs_actual, horizon_errors, training_curve
from forecast.predictor import Forecaster
from forecast.registry import GateDecision, decide, gate_lock, register
from forecast.runner import (
    TrainOutcome,
    config_digest,
    discard,
    load_data,
    publish,
    run_dir,
    train_and_evaluate,
)
from forecast.train import EpochStats

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


def default_uri(explicit: str | None = None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else MLflow 3's local SQLite default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def resolve_uri(cfg: TrackingConfig, flag: str | None = None) -> str:
    """--tracking-uri flag, else the config, else $MLFLOW_TRACKING_URI, else local SQLite."""
    return default_uri(flag or cfg.uri)


# how long commands without a config (models, runs, batch forecasts, serve) wait for a server
PREFLIGHT_SECONDS = 10.0


def preflight(uri: str, timeout: float, create: bool = True) -> None:
    """Fail in seconds, before training, if the tracking store cannot be used. With
    create=False (commands that only read) a SQLite store that does not exist is an error,
    not a new empty database."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        if not create and not db.is_file():
            raise TrackingError(f"tracking store {uri}: no database at {str(db)!r}; check "
                                "--tracking-uri or MLFLOW_TRACKING_URI (nothing was tracked "
                                "there)")
        folder = db.parent if str(db.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {str(folder)!r} does not exist or "
                                "is not writable; fix tracking.uri or MLFLOW_TRACKING_URI")
    elif scheme in ("http", "https"):
        import requests  # MLflow's own dependency

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"tracking server {uri} is not reachable ({err}); start it or "
                                "fix tracking.uri / MLFLOW_TRACKING_URI") from None
    # With SQLite the first client to open a new database creates its tables; two jobs that
    # start at once would both run MLflow's migrations and leave the store unusable (`table
    # _alembic_tmp_metrics already exists`): a lock file beside the database serialises that
    lock = exclusive(f"{uri.removeprefix('sqlite:///')}.lock") if scheme == "sqlite" \
        else contextlib.nullcontext()
    try:
        with lock:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        if scheme in ("", "file") and "MLFLOW_ALLOW_FILE_STORE" in str(err):
            raise TrackingError(_folder_store(uri)) from None
        raise TrackingError(f"tracking store {uri} cannot be used: {first_line(err)}") from None


def _folder_store(uri: str) -> str:
    """MLflow 3 refuses a path (file store) unless MLFLOW_ALLOW_FILE_STORE is set: name the
    database URI to use instead, and for a folder of runs, how to keep them."""
    parsed = urlparse(uri)
    path = Path(os.path.expanduser(url2pathname(parsed.path) if parsed.scheme == "file"
                                   else uri))
    if path.suffix == ".db":  # a SQLite database given without its scheme
        return (f"tracking store {uri} is a path, not a tracking URI: pass sqlite:///{path} "
                "for that SQLite database, or an http(s):// tracking server")
    if path.is_file():
        return (f"tracking store {uri} is a file, not a tracking store: pass a database URI, "
                "e.g. sqlite:///mlflow.db, or an http(s):// tracking server")
    folder = str(path).rstrip("/") or "mlruns"
    keep = (" (its runs: `mlflow migrate-filestore` moves them into a database, or "
            "MLFLOW_ALLOW_FILE_STORE=true keeps using the folder)") if path.is_dir() else ""
    return (f"tracking store {uri} is a folder, which MLflow 3 does not track into by default: "
            f"pass a database, e.g. sqlite:///{folder}.db, or an http(s):// tracking "
            f"server{keep}")


def ensure_experiment(uri: str, name: str) -> Experiment:
    """Make `name` the active experiment. With a SQLite store, a new experiment keeps its
    artifacts in `mlartifacts/` beside the database rather than in ./mlruns of whatever
    directory the job happened to start in."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment {name!r} is deleted in {uri}; restore it "
                          f"(`mlflow experiments restore --experiment-id {found.experiment_id}`)"
                          " or name another")
    if found is None and urlparse(uri).scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
        client.create_experiment(name, artifact_location=folder.as_uri())
    return mlflow.set_experiment(name)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_name(cfg: Config) -> str:
    w = cfg.windows
    return (f"{cfg.name}-patchtransformer-L{w.lookback}-H{w.horizon}-"
            f"{datetime.now():%Y%m%d-%H%M%S}")


def params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params (strings of at most 6000 characters); the search space of
    `forecast tune` is not a setting of the run itself."""
    return {k: "null" if v is None else str(v)[:6000] for k, v in cfg.flat().items()
            if not k.startswith("tune.")}


def log_epoch(stats: EpochStats) -> None:
    mlflow.log_metrics({"train_loss": stats.train_loss, "val_loss": stats.val_loss,
                        "lr": stats.lr, "epoch_seconds": stats.seconds,
                        "train_windows_per_second": stats.windows_per_second}, step=stats.epoch)


# how PostgreSQL and SQLite name a second insert of one (experiment, name, digest) dataset
DATASET_KEY_CONFLICT = ('"dataset_pk"', "UNIQUE constraint failed: datasets.")


def _log_dataset(series: SeriesSet) -> None:
    sample = pd.DataFrame(series.values[0][:1000], columns=series.channels)
    sample.insert(0, "timestamp", series.timestamps[0][:1000])
    with warnings.catch_warnings():  # MLflow registers this source class twice, then warns
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in "
                                "multiple ways", UserWarning)
        dataset = mlflow.data.from_pandas(sample, source=series.source,
                                          name=Path(series.source).name,
                                          digest=series.digest[:36])
    # Jobs that start at once on the same data each find the dataset missing and insert it;
    # all but one then fail on the store's unique key (PostgreSQL's dataset_pk). Logged again,
    # the dataset is found and only linked to this run.
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training")
            return
        except MlflowException as err:
            if attempt == 2 or not any(key in str(err) for key in DATASET_KEY_CONFLICT):
                raise
            time.sleep(0.2)


def input_example(series: SeriesSet, timestamp_column: str, rows: int) -> pd.DataFrame:
    """The last `rows` rows of the first series, in the pyfunc's history layout."""
    frame = pd.DataFrame(series.values[0][-rows:].astype("float64"), columns=series.channels)
    frame.insert(0, timestamp_column, series.timestamps[0][-rows:])
    return frame


@contextlib.contextmanager
def artifact_store() -> Iterator[None]:
    """Writing to the active run's artifact store: a store that cannot be written (a full
    disk, no permission, a file where its folder should be) is a tracking failure, exit 5."""
    try:
        yield
    except OSError as err:
        where = f" at {err.filename!r}" if err.filename else ""
        raise TrackingError(f"artifact store {mlflow.get_artifact_uri()} cannot be written"
                            f"{where} ({err.strerror or err}); free or fix that location, or "
                            "track into another store") from None


def _log_artifacts(outcome: TrainOutcome, folder: Path) -> None:
    cfg = outcome.config
    (folder / "config.yaml").write_text(dump_config(cfg))
    forecast_vs_actual(outcome.model, outcome.prepared, folder / "forecast_vs_actual.png",
                       calibration=outcome.calibration)
    horizon_errors(outcome.evaluation, folder / "error_per_step.csv",
                   folder / "error_per_step.png", outcome.intervals_per_step)
    training_curve(outcome.fit.history, folder / "training_curve.png", cfg.train.loss,
                   cfg.train.val_metric)
    with artifact_store():
        mlflow.log_artifacts(str(folder))


def close_run(status: str, error: str) -> None:
    """Mark the active run ended with `status`; a failure here must not hide the original."""
    try:
        mlflow.set_tag("error", error[:5000])
    except Exception as err:  # the store may be what failed; still try to end the run
        log.error("could not tag the run with its error: %s", err)
    try:
        mlflow.end_run(status)
    except Exception as err:
        log.error("could not mark the run %s: %s", status, err)


def end_open_runs(status: str) -> None:
    """End as `status` every run this process still has open: one whose closing an interrupt
    cut short (a SIGTERM arriving while a failure was being recorded). MLflow's exit handler
    would mark it FINISHED, and a later pipeline job would skip training, taking it for a
    successful run of the same data and config."""
    while (run := mlflow.active_run()) is not None:
        close_run(status, "the command stopped before this run was closed")
        if (after := mlflow.active_run()) is not None and after.info.run_id == run.info.run_id:
            return  # the store is unreachable: nothing more can be recorded


def _log_step0_metrics(outcome: TrainOutcome, model_id: str | None) -> None:
    """The scores (step 0) once the model is logged, linked to it. Logging a model re-sends
    the run's step-0 metrics to link them; on PostgreSQL each such row already stored fails
    the metric_pk constraint, so none may exist yet."""
    metrics = {**outcome.metrics, **outcome.fit.metrics(),
               "params_count": float(outcome.model.n_params())}
    if outcome.fit.linear_val_loss is not None:
        # the least-squares forecast alone is "epoch 0", which the best epoch can be: the
        # val_loss curve starts there, so that it shows the weights that were kept
        metrics["val_loss"] = outcome.fit.linear_val_loss
    mlflow.log_metrics(metrics, step=0, model_id=model_id)


def log_metric_series(series: dict[str, Sequence[float]], first_step: int = 1) -> None:
    """Metrics whose MLflow step is a position, not an epoch: `series[name][i]` is logged as
    `name` at step first_step + i (a horizon step, a backtest cutoff), in batches of MLflow's
    1,000-metric limit; NaN values are left out."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(v), now, first_step + i)
               for name, values in series.items() for i, v in enumerate(values)
               if math.isfinite(v)]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for lo in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[lo:lo + 1000], synchronous=True)


# interval scores logged per horizon step, as test_coverage_80_by_step at steps 1..H
PER_STEP_SCORES = ("coverage_80", "coverage_95", "interval_width_80", "interval_width_95",
                   "wql")


def _log_per_step(outcome: TrainOutcome) -> None:
    log_metric_series({f"test_{k}_by_step": v for k, v in outcome.intervals_per_step.items()
                       if k in PER_STEP_SCORES})


def encoder_tags(outcome: TrainOutcome) -> dict[str, str]:
    """`model.linear_only`: "true" when validation kept the least-squares linear forecast
    alone, so the Transformer adds nothing (shown by `models list` and `runs compare`)."""
    linear_only = outcome.linear_only
    return {} if linear_only is None else {"model.linear_only": str(linear_only).lower()}


@dataclass
class TrackedOutcome:
    outcome: TrainOutcome
    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None
    version: ModelVersion | None
    decision: GateDecision | None


def train_tracked(cfg: Config, uri: str, tags: dict[str, str] | None = None,
                  check: Callable[[SeriesSet], None] | None = None,
                  run_id: str | None = None) -> TrackedOutcome:
    """Train, evaluate, log, package, gate and register one configuration as one MLflow run.

    `check` runs on the loaded data inside the run (a gate that raises ends the run FAILED
    before training); `tags` are added to the run's own. `run_id`: continue that unfinished run
    (its job was restarted by its launcher) instead of starting one; epochs it has logged are
    not logged again."""
    tracking = cfg.tracking
    preflight(uri, tracking.timeout_seconds)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = ensure_experiment(uri, tracking.experiment)
    tags = {"forecast.version": metadata.version("forecast"),
            "model.registered_name": cfg.registered_model, **(tags or {})}
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    run = mlflow.start_run(run_id=run_id, tags=tags) if run_id else \
        mlflow.start_run(run_name=run_name(cfg), tags=tags)
    outcome: TrainOutcome | None = None
    scored = False
    try:
        if "error" in run.data.tags:  # the failure of the attempt this one continues
            MlflowClient(tracking_uri=uri).delete_tag(run.info.run_id, "error")
        mlflow.log_params(params(cfg))
        series = load_data(cfg)
        mlflow.set_tags({"data.sha256": series.digest, "data.source": series.source,
                         "data.newest": series.newest.isoformat(),
                         "config.sha256": config_digest(cfg)})
        _log_dataset(series)
        if check is not None:
            check(series)
        outcome = train_and_evaluate(cfg, series, log_epoch, staged=True)  # steps 1, 2, ...
        mlflow.set_tags(encoder_tags(outcome))
        # a continued run (torchrun's restart) already holds the epochs its first attempt logged
        logged = {m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(
            run.info.run_id, "val_loss")} if run_id else set()
        resumed = outcome.fit.resumed_from_epoch
        if resumed:
            # Epochs trained before the restart come from the checkpoint: the curves stay whole.
            mlflow.set_tag("train.resumed_from_epoch", str(resumed))
            for stats in outcome.fit.history[:resumed]:
                if stats.epoch not in logged:
                    log_epoch(stats)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(outcome, Path(tmp))
        example = input_example(series, cfg.data.timestamp_column, cfg.windows.lookback)
        with artifact_store():
            info = log_pyfunc(outcome.model_dir, example)
        _log_step0_metrics(outcome, info.model_id)
        _log_per_step(outcome)
        scored = True
        version = decision = None
        if tracking.auto_register:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            challenger = Forecaster(load_bundle(outcome.model_dir))
            with gate_lock(client, cfg.registered_model, run.info.run_id):
                decision = decide(client, uri, tracking, cfg.registered_model, challenger,
                                  outcome.prepared, outcome.validation)
                mlflow.set_tags(decision.tags())
                mlflow.log_metric("gate_promoted", float(decision.promoted), step=0,
                                  model_id=info.model_id)
                version = register(client, cfg.registered_model, info, run.info.run_id,
                                   decision, encoder_tags(outcome))
            mlflow.set_tag("model.version", version.version)
    except BaseException as err:
        if outcome is not None:
            if not scored:  # failed while logging its files: the run still shows its scores
                with contextlib.suppress(Exception):
                    _log_step0_metrics(outcome, None)
            discard(outcome)
        if isinstance(err, KeyboardInterrupt):
            close_run("KILLED", "interrupted (KeyboardInterrupt)")
        else:
            close_run("FAILED", f"{type(err).__name__}: {err}")
        raise
    mlflow.end_run("FINISHED")
    try:
        publish(outcome)
    except OSError as err:  # the run and its model are in MLflow; only the local copy is late
        log.error("run %s finished, but its files could not be moved into %s (%s); they are "
                  "in %s", run.info.run_id, run_dir(cfg), err, outcome.output_dir)
    return TrackedOutcome(outcome, run.info.run_id, experiment.experiment_id, uri,
                          info.model_uri, version, decision)
