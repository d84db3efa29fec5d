"""The unattended training job against a real SQLite MLflow store: skip on unchanged input,
gates that keep the registry untouched, the lock, resume after a kill, and JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from forecast.cli import main
from forecast.config import dump_config
from forecast.errors import (
    ConfigError,
    DataError,
    ForecastError,
    LockHeld,
    StaleData,
    TrackingError,
    TrainingError,
)
from forecast.train import CHECKPOINT
from pipelines.lock import JobLock, lock_path
from tests.tracked import EXPERIMENT, NAME, config, series_csv


@pytest.fixture
def job(tmp_path: Path) -> tuple[str, Path, MlflowClient]:
    """A tracking store, a data file and a config file for one pipeline."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = series_csv(tmp_path / "series.csv", n=800)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(dump_config(config(tmp_path, csv, train={"epochs": 1})))
    return uri, cfg_path, MlflowClient(tracking_uri=uri, registry_uri=uri)


def pipeline(uri: str, cfg_path: Path, *extra: str) -> int:
    return main(["pipeline", "train", "--config", str(cfg_path), "--tracking-uri", uri, *extra])


def runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name(EXPERIMENT)
    return list(client.search_runs([exp.experiment_id])) if exp else []


def versions(client: MlflowClient) -> int:
    return len(client.search_model_versions(f"name = '{NAME}'"))


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = {cls.__name__: cls.exit_code for cls in
             (ForecastError, ConfigError, DataError, TrainingError, TrackingError, LockHeld,
              StaleData)}
    assert codes == {"ForecastError": 1, "ConfigError": 2, "DataError": 3, "TrainingError": 4,
                     "TrackingError": 5, "LockHeld": 6, "StaleData": 7}
    errors_page = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    for code in codes.values():
        assert f"| {code} |" in errors_page


def test_second_run_on_unchanged_input_skips_and_force_trains(
        job: tuple[str, Path, MlflowClient], caplog: pytest.LogCaptureFixture) -> None:
    uri, cfg_path, client = job
    assert pipeline(uri, cfg_path) == 0
    first = runs(client)
    assert [r.info.status for r in first] == ["FINISHED"]
    assert first[0].data.tags["forecast.pipeline"] == "train"
    assert versions(client) == 1

    caplog.clear()
    assert pipeline(uri, cfg_path) == 0
    assert len(runs(client)) == 1 and versions(client) == 1
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipped")]
    assert skipped and skipped[0].run_id == first[0].info.run_id

    # A changed setting is a different job: it trains.
    assert pipeline(uri, cfg_path, "--set", "train.lr=0.004") == 0
    assert len(runs(client)) == 2
    assert pipeline(uri, cfg_path, "--set", "train.lr=0.004", "--force") == 0
    assert len(runs(client)) == 3 and versions(client) == 3


def test_unchanged_input_skips_for_a_registered_name_with_a_backslash(
        job: tuple[str, Path, MlflowClient]) -> None:
    uri, cfg_path, client = job
    name = "--set", "tracking.registered_model=team\\fc"
    assert pipeline(uri, cfg_path, *name) == 0
    assert pipeline(uri, cfg_path, *name) == 0
    assert len(runs(client)) == 1  # found its last run, so skipped instead of training again
    assert len(client.search_model_versions("name = 'team\\fc'")) == 1


def test_unreadable_checkpoint_is_reported_once_and_training_starts_afresh(
        job: tuple[str, Path, MlflowClient], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    uri, cfg_path, client = job
    saved = tmp_path / "outputs" / "tiny" / "checkpoints" / CHECKPOINT
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"not a checkpoint")
    assert pipeline(uri, cfg_path) == 0
    said = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert [r.info.status for r in runs(client)] == ["FINISHED"] and versions(client) == 1


def test_corrupted_data_fails_the_run_and_leaves_the_registry_untouched(
        job: tuple[str, Path, MlflowClient], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, client = job
    assert pipeline(uri, cfg_path) == 0
    before = versions(client)
    bad = tmp_path / "bad.csv"
    frame = pd.read_csv(tmp_path / "series.csv")
    frame["a"] = frame["a"].astype(object)
    frame.loc[300, "a"] = "n/a?"
    frame.to_csv(bad, index=False)
    assert pipeline(uri, cfg_path, "--data", str(bad)) == DataError.exit_code
    assert "column 'a' is not numeric" in capsys.readouterr().err
    failed = [r for r in runs(client) if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["error"].startswith("DataError")
    assert versions(client) == before
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"


def test_freshness_gate_refuses_old_data_before_training(
        job: tuple[str, Path, MlflowClient], capsys: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, client = job
    # series_csv: 800 hourly rows from 2024-01-01 → newest 2024-02-03 07:00
    code = pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=1D",
                    "--as-of", "2024-02-10T00:00:00Z")
    assert code == StaleData.exit_code == 7
    err = capsys.readouterr().err
    assert "2024-02-03 07:00:00+00:00" in err and "pipeline.max_data_age" in err
    [run] = runs(client)
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("StaleData")
    assert not run.data.metrics  # refused before the first epoch
    assert versions(client) == 0
    assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=1D",
                    "--as-of", "2024-02-03T20:00:00") == 0
    assert versions(client) == 1
    # the run records its data's newest time, so a later job needs no re-read to judge age
    assert runs(client)[0].data.tags["data.newest"] == "2024-02-03T07:00:00+00:00"
    # the same data a week later is stale, not "unchanged, skipped"
    assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=1D",
                    "--as-of", "2024-02-10T00:00:00Z") == StaleData.exit_code
    assert [r.info.status for r in runs(client)] == ["FAILED", "FINISHED", "FAILED"]
    assert versions(client) == 1


def test_an_as_of_before_the_newest_data_is_refused_not_a_negative_age(
        job: tuple[str, Path, MlflowClient], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    uri, cfg_path, client = job
    # newest 2024-02-03 07:00 UTC; 10:30+05:00 is 05:30 UTC: the gate passed "-1 days +22:30"
    assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=1h",
                    "--as-of", "2024-02-03T10:30:00+05:00") == 2
    assert ("error: --as-of 2024-02-03 10:30:00+05:00 is before the data's newest timestamp "
            "2024-02-03 07:00:00+00:00; pass a later --as-of, or cut the data at it"
            ) in capsys.readouterr().err
    [run] = runs(client)
    assert run.info.status == "FAILED" and versions(client) == 0
    # without pipeline.max_data_age the flag changes nothing: said, not silently ignored
    assert pipeline(uri, cfg_path, "--as-of", "2024-01-01") == 0
    assert any("--as-of is used only by the freshness gate" in m for m in caplog.messages)


@pytest.mark.slow
def test_sigterm_after_the_epochs_ends_the_run_killed_and_registers_nothing(
        job: tuple[str, Path, MlflowClient]) -> None:
    uri, cfg_path, client = job
    proc = subprocess.Popen(
        [sys.executable, "-m", "forecast.cli", "pipeline", "train", "--config", str(cfg_path),
         "--tracking-uri", uri], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # scoring, model logging and registration come after the epoch loop, where SIGTERM
        # used to kill the process and leave its run RUNNING
        for line in proc.stderr:
            if "scoring the test block" in line:
                proc.send_signal(signal.SIGTERM)
                break
        tail = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, tail[-3000:]
    finally:
        proc.kill()
    [run] = runs(client)
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["error"]
    assert versions(client) == 0


def test_invalid_max_age_and_as_of_name_the_field(job: tuple[str, Path, MlflowClient],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, _ = job
    assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=soon") == 2
    assert "pipeline.max_data_age = 'soon' is not a duration" in capsys.readouterr().err
    assert pipeline(uri, cfg_path, "--as-of", "yesterday-ish") == 2
    assert "--as-of 'yesterday-ish' is not a time" in capsys.readouterr().err
    # with JSON logs the failure is a JSON record too, for the collector that reads them
    assert pipeline(uri, cfg_path, "--as-of", "yesterday-ish", "--log-format", "json") == 2
    [record] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert record["level"] == "ERROR" and record["exit_code"] == 2
    assert record["message"].startswith("error: --as-of 'yesterday-ish' is not a time")
    for blank in ("", "NaT"):  # pandas reads both as NaT, which no age comparison refuses
        assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age=1h", "--as-of",
                        blank) == 2
        assert f"--as-of {blank!r} is not a time" in capsys.readouterr().err
    assert pipeline(uri, cfg_path, "--set", "pipeline.max_data_age='6'") == 2  # 6 ns
    assert "'6' is not a duration with a unit" in capsys.readouterr().err


def test_a_held_lock_makes_the_second_run_exit_at_once(
        job: tuple[str, Path, MlflowClient], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, client = job
    path = lock_path(tmp_path / "outputs" / "locks", "train", NAME)
    with JobLock(path, "test holder"):
        started = time.perf_counter()
        assert pipeline(uri, cfg_path) == LockHeld.exit_code == 6
        assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert f"model '{NAME}' is already running (pid {os.getpid()}" in err
    assert runs(client) == [] and versions(client) == 0
    assert pipeline(uri, cfg_path) == 0  # released: the next run goes ahead


def test_a_folder_where_the_lock_file_goes_is_a_config_error(
        job: tuple[str, Path, MlflowClient], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, client = job
    path = lock_path(tmp_path / "outputs" / "locks", "train", NAME)
    path.mkdir(parents=True)
    assert pipeline(uri, cfg_path) == 2  # an IsADirectoryError traceback, exit 1
    assert (f"error: lock file {path} cannot be opened (Is a directory); remove what is in its "
            "place or set pipeline.lock_dir to another folder") in capsys.readouterr().err
    assert runs(client) == [] and versions(client) == 0


def test_json_logs_carry_the_run_id(job: tuple[str, Path, MlflowClient],
                                    capfd: pytest.CaptureFixture[str]) -> None:
    uri, cfg_path, client = job
    code = subprocess.run(
        [sys.executable, "-m", "forecast", "pipeline", "train", "--config", str(cfg_path),
         "--tracking-uri", uri, "--log-format", "json"], capture_output=True, text=True,
        timeout=300)
    assert code.returncode == 0, code.stderr[-2000:]
    # every line is one JSON object, for a log shipper: MLflow's own log lines and Python
    # warnings included, and no plain-text report on stdout (a crontab sends both to one file)
    assert code.stdout == ""
    records = [json.loads(line) for line in code.stderr.splitlines()]
    # MLflow's dataset-source and schema-hint warnings came on every run
    assert [r["message"] for r in records if r["level"] == "WARNING"] == []
    [run] = runs(client)
    epochs = [r for r in records if r["message"].startswith("epoch 1:")]
    assert epochs and epochs[0]["run_id"] == run.info.run_id
    done = [r for r in records if r.get("status") == "trained"]
    assert done and done[0]["model_version"] == "1" and done[0]["promoted"] is True
    assert done[0]["run_id"] == run.info.run_id and done[0]["level"] == "INFO"


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


EPOCHS = 10


@pytest.mark.slow
def test_overlapping_run_is_locked_out_and_a_killed_job_resumes_from_its_checkpoint(
        tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = series_csv(tmp_path / "series.csv", n=3000)
    cfg_path = tmp_path / "job.yaml"
    cfg = config(tmp_path, csv, train={"epochs": EPOCHS, "max_windows_per_epoch": 4096})
    cfg_path.write_text(dump_config(cfg))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ckpt = tmp_path / "outputs" / "tiny" / "checkpoints" / CHECKPOINT
    argv = [sys.executable, "-m", "forecast", "pipeline", "train", "--config", str(cfg_path),
            "--tracking-uri", uri]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: ckpt.is_file(), 120, "the first epoch's checkpoint")
        # Frozen, the first job still holds the lock: the overlap is certain, not a race.
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert second.returncode == LockHeld.exit_code, second.stderr[-2000:]
        assert "is already running (pid" in second.stderr
        first.send_signal(signal.SIGKILL)  # no chance to close its MLflow run
        first.wait(timeout=30)
    finally:
        first.kill()
    [killed] = runs(client)
    assert killed.info.status == "RUNNING"  # what a hard kill leaves behind
    epochs_before = len(client.get_metric_history(killed.info.run_id, "val_loss"))
    assert epochs_before < EPOCHS

    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint" in resumed.stderr
    new = [r for r in runs(client) if r.info.run_id != killed.info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    tags = new[0].data.tags
    assert tags["forecast.continues_run_id"] == killed.info.run_id
    start = int(tags["train.resumed_from_epoch"])
    assert epochs_before <= start < EPOCHS
    # The whole curve is on the new run; the killed one is closed and says why.
    steps = [m.step for m in client.get_metric_history(new[0].info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
    old = client.get_run(killed.info.run_id)
    assert old.info.status == "KILLED" and "continued from its checkpoint" in \
        old.data.tags["error"]
    assert versions(client) == 1
    assert not ckpt.exists()  # cleared once training finished
