"""Airflow DAG: every hour, the training pipeline, then a batch forecast with the champion.

Each task is one `forecast` command run by a BashOperator, and the command's exit code is the
task's outcome (pipelines/schedules/README.md has the table):

    0        success: trained (promoted or not), or skipped because data and config equal
             the last successful run's
    6, 7     another run holds the lock / the data is too old: the task shows as *skipped*,
             and so does the batch forecast after it (nothing new to forecast from)
    other    the task fails, without retries

Install: copy this file into the DAGs folder of an Airflow 2.4+ or 3.x deployment whose
workers can run the project (`FORECAST_PROJECT_DIR`, default /opt/forecast, holding the checkout
and its .venv), and set the Airflow Variable `forecast_mlflow_tracking_uri`. The DAG imports
nothing from the project: Airflow parses this file in its own environment, where `forecast`
is usually not installed.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime, timedelta

from airflow import DAG

try:  # Airflow 3 (and 2.x with the standard provider)
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2.x
    from airflow.operators.bash import BashOperator

PROJECT_DIR = os.environ.get("FORECAST_PROJECT_DIR", "/opt/forecast")
DATA_DIR = os.environ.get("FORECAST_DATA_DIR", "/srv/forecast")

# The arguments after `forecast`; tests/test_schedules.py parses them with the project's CLI.
TRAIN_ARGV = [
    "pipeline", "train",
    "--config", "pipelines/configs/etth1.yaml",
    "--data", f"{DATA_DIR}/data/etth1.csv",
    "--set", "pipeline.max_data_age=6h",
    "--log-format", "json",
]
BATCH_FORECAST_ARGV = [
    "pipeline", "batch-forecast",
    "--model", "models:/etth1@champion",
    # the newest rows of each series, long layout: series_id, date, one column per channel
    "--input", f"{DATA_DIR}/data/etth1_latest.parquet",
    "--output", f"{DATA_DIR}/forecasts/etth1.parquet",
    "--log-format", "json",
]

# forecast.errors.LockHeld.exit_code and StaleData.exit_code, written out because this file
# must not import the project; a test checks that they still agree.
SKIP_EXIT_CODES = [6, 7]


def command(argv: list[str]) -> str:
    return shlex.join([f"{PROJECT_DIR}/.venv/bin/forecast", *argv])


# Rendered when the task runs, so the URI is read from the Variable then, not at every parse;
# a missing Variable fails the task before the command starts.
ENV = {"MLFLOW_TRACKING_URI": "{{ var.value.forecast_mlflow_tracking_uri }}"}

with DAG(
    dag_id="forecast_etth1",
    description="Hourly training pipeline (skips unchanged data), then a champion forecast",
    schedule="7 * * * *",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    # One run at a time, and no backfill of missed hours: training on the newest data covers
    # them, and the pipeline has no use for old data intervals.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    # No retries: a config or data error (2, 3) or a seeded training failure (4) would fail
    # the same way again, and the next hourly run retries an unreachable tracking server (5).
    default_args={"owner": "forecast", "retries": 0},
    tags=["forecast"],
) as dag:
    train = BashOperator(
        task_id="train",
        bash_command=command(TRAIN_ARGV),
        cwd=PROJECT_DIR,
        env=ENV,
        append_env=True,  # keep PATH, HOME and the rest of the worker's environment
        skip_on_exit_code=SKIP_EXIT_CODES,
        # A run stopped here keeps its last epoch's checkpoint; the next one continues it.
        execution_timeout=timedelta(minutes=50),
    )
    batch_forecast = BashOperator(
        task_id="batch_forecast",
        bash_command=command(BATCH_FORECAST_ARGV),
        cwd=PROJECT_DIR,
        env=ENV,
        append_env=True,
        execution_timeout=timedelta(minutes=20),
    )
    train >> batch_forecast
