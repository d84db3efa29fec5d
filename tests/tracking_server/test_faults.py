"""Faults of a deployment, end to end with real processes: the tracking server killed
(SIGKILL) while a job trains, and PostgreSQL stopped and started again under `forecast
serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from forecast.cli import main
from forecast.config import dump_config
from forecast.registry import CHAMPION, load_version_forecaster
from forecast.train import CHECKPOINT
from tests.servers import Service
from tests.tracked import config, series_csv
from tests.tracking_server.conftest import Backend

pytestmark = pytest.mark.slow

FORECAST = str(Path(sys.executable).parent / "forecast")
T = TypeVar("T")


def poll(condition: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """condition()'s first truthy value within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what} not within {timeout}s")


def test_a_server_killed_mid_training_fails_the_job_fast_and_the_rerun_resumes(
        backend: Backend, tmp_path: Path) -> None:
    name = "fault-model"
    # the session's server itself (a second one costs its start-up, about 20 s on 2 busy
    # cores); it comes back below on the same port and database, for the tests after this
    server = backend.server
    client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    # 20 short epochs: the kill lands after the first is logged, well before the last
    cfg = config(tmp_path, series_csv(tmp_path / "series.csv", n=800),
                 train={"epochs": 20, "max_windows_per_epoch": 128},
                 tracking={"experiment": "faults", "registered_model": name})
    path = tmp_path / "job.yaml"
    path.write_text(dump_config(cfg))
    # no MLFLOW_HTTP_* variables: the job's own bounded retry defaults are what is tested
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    job = subprocess.Popen([FORECAST, "train", "--config", str(path)],
                           env={**env, "MLFLOW_TRACKING_URI": server.uri},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def logged_an_epoch() -> bool:
            assert job.poll() is None, job.stdout.read().decode() if job.stdout else ""
            exp = client.get_experiment_by_name("faults")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id,
                                                                 "train_loss"))
        poll(logged_an_epoch, 180, "the job's first epoch")
        server.stop(signal.SIGKILL)
        killed = time.monotonic()
        out, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
        # back on the same port and database, as a restarted deployment would be (and the
        # tests after this one need it, whatever failed here)
        server.start()
    took = time.monotonic() - killed
    text = out.decode(errors="replace")
    # MLflow alone would retry each request for about four minutes
    assert job.returncode == 5, text[-3000:]
    assert took < 90, f"the job took {took:.0f}s to give up"
    assert text.strip().splitlines()[-1].startswith("error: "), text[-3000:]
    checkpoint = tmp_path / "outputs" / cfg.name / "checkpoints" / CHECKPOINT
    assert checkpoint.is_file()  # the last finished epoch, for the rerun

    assert not client.search_model_versions(f"name = '{name}'")  # nothing half-registered
    assert main(["train", "--config", str(path), "--tracking-uri", server.uri]) == 0
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    rerun = client.get_run(versions[0].run_id)
    assert rerun.info.status == "FINISHED"
    assert int(rerun.data.tags["train.resumed_from_epoch"]) >= 1
    assert not checkpoint.exists()  # cleared once the run finished
    assert (tmp_path / "outputs" / cfg.name / "model").is_dir()


def test_serving_rides_out_a_postgresql_restart_and_swaps_after_it(
        backend: Backend, tmp_path: Path) -> None:
    name, uri = "restart-model", backend.uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    csv = series_csv(tmp_path / "series.csv", n=800)
    path = tmp_path / "job.yaml"
    path.write_text(dump_config(config(tmp_path, csv, train={"epochs": 1},
                                       tracking={"experiment": "restart",
                                                 "registered_model": name})))
    for seed in (0, 1):  # two versions, whatever the gate decides about the second
        assert main(["train", "--config", str(path), "--tracking-uri", uri, "--set",
                     f"train.seed={seed}"]) == 0
    first = client.get_model_version_by_alias(name, CHAMPION).version
    other = "2" if first == "1" else "1"
    history = pd.read_csv(csv).iloc[-48:]
    body = {"series": [{"id": "s", "history": {c: history[c].tolist() for c in ("a", "b")}}]}

    with Service(f"models:/{name}@{CHAMPION}", uri, "--reload-interval", "0.5") as svc:
        def ready() -> dict:
            return httpx.get(f"{svc.url}/readyz", timeout=30).json()

        def forecast() -> list[float]:
            reply = httpx.post(f"{svc.url}/v1/forecast", json=body, timeout=30)
            assert reply.status_code == 200, reply.text
            return reply.json()["forecasts"][0]["values"]["a"]

        assert ready()["model"]["version"] == first
        before = forecast()
        backend.postgres.stop()
        try:
            down = poll(lambda: (r := ready())["detail"].count("unreachable") and r, 120,
                        "/readyz reporting the registry unreachable", every=0.5)
            assert down["ready"] and down["model"]["version"] == first, down
            assert forecast() == before  # the loaded model keeps answering
        finally:
            backend.postgres.start()
        client.set_registered_model_alias(name, CHAMPION, other)
        swapped = poll(lambda: (r := ready())["model"]["version"] == other and r, 120,
                       f"the service swapping to v{other}", every=0.5)
        assert "failed" not in swapped["detail"], swapped
        expected = load_version_forecaster(uri, name, other).predict_frame(history[["a", "b"]])
        np.testing.assert_allclose(forecast(), expected["a"].to_numpy(), rtol=1e-5)
