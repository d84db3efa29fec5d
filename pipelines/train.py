"""The scheduled training job, safe to run every hour without anyone watching:

    lock → data digest → skip if data and config equal the last successful run's
         → [MLflow run: validate data → freshness gate → split → train (resuming a killed
            run's checkpoint) → evaluate with baselines → log → register → champion gate]

Run as `forecast pipeline train --config pipelines/configs/etth1.yaml`. Exit codes: see
forecast/errors.py and docs/errors.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from forecast import distributed
from forecast.config import Config
from forecast.data import SeriesSet, file_sha256
from forecast.errors import ConfigError, DataError, StaleData
from forecast.paths import writable_dir
from forecast.registry import filter_literal
from forecast.runner import checkpoint_dir, config_digest, load_data, run_key
from forecast.tracking import TrackedOutcome, preflight, train_tracked
from forecast.train import Checkpointer
from pipelines.lock import JobLock, lock_path

log = logging.getLogger(__name__)

PIPELINE_TAG = "forecast.pipeline"
RUN_KEY_TAG = "forecast.run_key"
CONTINUES_TAG = "forecast.continues_run_id"


@dataclass(frozen=True)
class JobResult:
    status: Literal["trained", "skipped"]
    run_id: str | None
    tracked: TrackedOutcome | None = None


def data_digest(cfg: Config) -> str:
    """sha256 of the data file's bytes (the synthetic demo: of its values), before validation."""
    if cfg.data.path is None:
        return load_data(cfg).digest
    path = Path(cfg.data.path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; check data.path or --data")
    return file_sha256(path)


def freshness_gate(max_age: pd.Timedelta, now: pd.Timestamp,
                   as_of: bool = False) -> Callable[[SeriesSet], None]:
    """Refuse data older than `max_age` at `now`; `as_of`: `now` is the user's --as-of, which
    data newer than it contradicts (a backfill would train on what it could not have seen)."""
    def check(series: SeriesSet) -> None:
        newest = series.newest
        age = now - newest
        if as_of and age < pd.Timedelta(0):
            raise ConfigError(f"--as-of {now} is before the data's newest timestamp {newest}; "
                              "pass a later --as-of, or cut the data at it")
        if age > max_age:
            raise StaleData(f"newest timestamp {newest} is {age} old at {now}, more than "
                            f"pipeline.max_data_age ({max_age}); check the upstream export, "
                            "or raise pipeline.max_data_age")
        log.info("freshness gate passed: newest timestamp %s is %s old", newest, age)

    return check


def _stale(cfg: Config, previous: Run, now: pd.Timestamp) -> bool:
    """Whether unchanged data has grown older than pipeline.max_data_age since the run that
    trained on it: a job must not skip it as done when the upstream export has stopped, but go
    on to fail the gate. The run's `data.newest` tag answers without reading the data."""
    max_age = cfg.pipeline.max_age
    if max_age is None:
        return False
    tag = previous.data.tags.get("data.newest")
    newest = pd.Timestamp(tag) if tag else load_data(cfg).newest  # runs from before the tag
    return now - newest > max_age


def _runs(client: MlflowClient, experiment: str, query: str) -> list[Run]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], filter_string=query,
                                   order_by=["attributes.start_time DESC"], max_results=1))


def last_success(client: MlflowClient, cfg: Config) -> Run | None:
    runs = _runs(client, cfg.tracking.experiment,
                 f"tags.`{PIPELINE_TAG}` = 'train' AND tags.`model.registered_name` = "
                 f"{filter_literal(cfg.registered_model)} AND attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def interrupted_run(client: MlflowClient, cfg: Config, key: str) -> Run | None:
    """The newest unfinished run of this exact config and data whose checkpoint survives."""
    if cfg.train.resume is False or Checkpointer(checkpoint_dir(cfg), key).load(
            warn=False) is None:
        return None
    runs = _runs(client, cfg.tracking.experiment,
                 f"tags.`{RUN_KEY_TAG}` = '{key}' AND "
                 "attributes.status != 'FINISHED'")
    return runs[0] if runs else None


def run_job(cfg: Config, uri: str, force: bool = False, as_of: pd.Timestamp | None = None,
            ready: Callable[[SeriesSet], None] | None = None) -> JobResult:
    """Run the job once; `ready` is called on the data once it has passed every gate, just
    before training (rank 0 of a distributed job tells the other ranks to start there)."""
    folder = writable_dir(Path(cfg.pipeline.lock_dir or Path(cfg.output_dir) / "locks"),
                          "pipeline.lock_dir" if cfg.pipeline.lock_dir else "output_dir")
    what = f"the training pipeline for model {cfg.registered_model!r}"
    with JobLock(lock_path(folder, "train", cfg.registered_model), what):
        preflight(uri, cfg.tracking.timeout_seconds)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        digest, settings = data_digest(cfg), config_digest(cfg)
        now = as_of if as_of is not None else pd.Timestamp.now(tz="UTC")
        max_age = cfg.pipeline.max_age
        gate = freshness_gate(max_age, now, as_of is not None) if max_age is not None \
            else None

        def check(series: SeriesSet) -> None:
            if gate is not None:
                gate(series)
            if ready is not None:
                ready(series)

        if as_of is not None and max_age is None:
            log.warning("--as-of is used only by the freshness gate, and pipeline.max_data_age "
                        "is not set: it changes nothing")
        previous = last_success(client, cfg)
        if previous is not None and not force:
            tags = previous.data.tags
            if tags.get("data.sha256") == digest and tags.get("config.sha256") == settings \
                    and not _stale(cfg, previous, now):
                log.info("skipped: data (sha256 %s…) and config equal those of the last "
                         "successful run; pass --force to train anyway", digest[:12],
                         extra={"run_id": previous.info.run_id, "status": "skipped"})
                return JobResult("skipped", previous.info.run_id)
        key = run_key(cfg, digest)
        tags = {PIPELINE_TAG: "train", RUN_KEY_TAG: key}
        earlier = interrupted_run(client, cfg, key)
        same_run = None
        if earlier is not None and distributed.restarted():
            # the launcher restarted this very job (torchrun --max-restarts): one job, one run
            same_run = earlier.info.run_id
            log.info("continuing run %s after a restart, from its checkpoint in %s", same_run,
                     checkpoint_dir(cfg))
        elif earlier is not None:
            tags[CONTINUES_TAG] = earlier.info.run_id
            log.info("continuing run %s from its checkpoint in %s", earlier.info.run_id,
                     checkpoint_dir(cfg))
            if earlier.info.status == "RUNNING":  # its process died without closing it
                client.set_tag(earlier.info.run_id, "error",
                               "the job ended without closing this run (killed); a later job "
                               "continued from its checkpoint")
                client.set_terminated(earlier.info.run_id, "KILLED")
        tracked = train_tracked(cfg, uri, tags, check, run_id=same_run)
    decision = tracked.decision
    version = str(tracked.version.version) if tracked.version else None
    outcome = f"registered v{version}" if version else "not registered"
    verdict = ("" if decision is None else
               f", {'promoted to champion' if decision.promoted else 'not promoted'}: "
               f"{decision.reason}")
    log.info("trained: %s %s%s", cfg.registered_model, outcome, verdict,
             extra={"run_id": tracked.run_id, "status": "trained",
                    "model_version": version,
                    "promoted": bool(decision and decision.promoted)})
    return JobResult("trained", tracked.run_id, tracked)

