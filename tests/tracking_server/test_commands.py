"""Every command against a real `mlflow server` on 127.0.0.1 with proxied artifacts (clients
know only MLFLOW_TRACKING_URI), over the session's PostgreSQL: train, demo, pipeline train,
tune, models list/promote, runs compare, evaluate, batch forecasting and `forecast serve` from
models:/NAME@ALIAS, `mlflow models serve`; and the gate's lock. The demo and the gate's lock,
which depend on how the store handles concurrent writes, also run over a SQLite backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from forecast.bundle import load_bundle
from forecast.cli import main
from forecast.config import dump_config
from forecast.errors import TrackingError
from forecast.packaging import bundle_path
from forecast.predictor import Forecaster
from forecast.registry import CHAMPION, gate_lock
from tests.servers import MlflowServer, Postgres, Service, free_port, wait_until_up
from tests.tracked import EXPERIMENT, NAME, config, series_csv
from tests.tracking_server.conftest import Backend

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# the demo's synthetic year, trained for seconds
DEMO_FAST = ["windows.lookback=24", "windows.horizon=6", "model.patch_len=8",
             "model.patch_stride=4", "model.d_model=8", "model.n_heads=2", "model.n_layers=1",
             "model.d_ff=16", "train.epochs=1", "train.max_windows_per_epoch=512",
             "train.num_threads=1", "train.progress=false", "eval.linear_max_windows=500"]
BOTH = pytest.mark.parametrize("stack", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Stack:
    backend: str
    server: MlflowServer
    postgres: Postgres | None
    root: Path
    csv: Path
    cfg_path: Path
    client: MlflowClient
    # how much of PostgreSQL's and the server's logs other test files had written before
    logs_from: tuple[int, int] = (0, 0)

    @property
    def uri(self) -> str:
        return self.server.uri

    def new_logs(self) -> tuple[str, str]:
        """What PostgreSQL (empty for SQLite) and the server logged since the stack was made."""
        pg = self.postgres.log()[self.logs_from[0]:] if self.postgres else ""
        return pg, self.server.log()[self.logs_from[1]:]


def make_stack(backend: str, server: MlflowServer, pg: Postgres | None, root: Path) -> Stack:
    csv = series_csv(root / "series.csv", n=800)
    cfg_path = root / "job.yaml"
    cfg_path.write_text(dump_config(config(root, csv, train={"epochs": 1})))
    return Stack(backend, server, pg, root, csv, cfg_path,
                 MlflowClient(tracking_uri=server.uri, registry_uri=server.uri),
                 (len(pg.log()) if pg else 0, len(server.log())))


@pytest.fixture(scope="module")
def postgresql_stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return make_stack("postgresql", backend.server, backend.postgres,
                      tmp_path_factory.mktemp("postgresql"))


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("sqlite")
    server = MlflowServer(f"sqlite:///{root / 'server.db'}", str(root / "artifacts"),
                          root / "server", workers=1)
    try:
        yield make_stack("sqlite", server, None, root)
    finally:
        server.stop(signal.SIGKILL)  # nothing of it is needed after the module


@pytest.fixture
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The PostgreSQL stack, or the one a test names with BOTH; MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI point at it for the test."""
    found = request.getfixturevalue(f"{getattr(request, 'param', 'postgresql')}_stack")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", found.uri)
    # mlflow.set_registry_uri (called by every in-process training) exports
    # MLFLOW_REGISTRY_URI, and a subprocess such as `mlflow models serve` resolves models:/
    # there first: without this it served another test's store's tiny-model
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", found.uri)
    return found


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def version_forecaster(stack: Stack, version: str) -> Forecaster:
    """A version's bundle, downloaded through the server's artifact proxy."""
    folder = stack.root / f"{stack.backend}-v{version}"
    if not folder.is_dir():
        mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}",
                                            dst_path=str(folder), tracking_uri=stack.uri)
    return Forecaster(load_bundle(bundle_path(folder)))


def champion_forecaster(stack: Stack) -> Forecaster:
    """The champion's bundle."""
    return version_forecaster(stack, stack.client.get_model_version_by_alias(
        NAME, CHAMPION).version)


@BOTH
def test_demo_logs_and_registers_through_the_server(stack: Stack,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output-dir", str(stack.root / "out"), *sets(DEMO_FAST)]) == 0
    out = capsys.readouterr().out
    assert "registry: forecast-demo v1 promoted to champion" in out
    assert f"MLflow UI:     open {stack.uri} in a browser" in out
    assert "mlflow ui" not in out  # it would need the server's database, not its URL
    version = stack.client.get_model_version("forecast-demo", "1")
    # the version points at MLflow 3's logged model, not at a run-relative path
    assert version.source.startswith("models:/m-")
    model_id = version.source.removeprefix("models:/")
    run = stack.client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert {a.path for a in stack.client.list_artifacts(run.info.run_id)} >= {
        "config.yaml", "training_curve.png"}
    # every metric once: epoch 0 (least squares) and 1 of val_loss, each written a single time
    steps = [m.step for m in stack.client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(steps) == [0, 1]
    # the scores are linked to the logged model the version was made from
    logged = stack.client.get_logged_model(model_id)
    assert {"test_mse", "val_loss", "gate_promoted"} <= {m.key for m in logged.metrics}


def test_pipeline_train_and_train_register_with_gate_decisions(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "train", "--config", str(stack.cfg_path)]) == 0
    assert main(["train", "--config", str(stack.cfg_path), "--set", "train.seed=1"]) == 0
    versions = stack.client.search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert all(v.tags.get("gate.decision") in ("promoted", "rejected") for v in versions)
    assert stack.client.get_model_version_by_alias(NAME, "challenger").version == "2"
    # the gate lock is released once each job has registered
    assert not stack.client.search_registered_models(f"name = '{NAME}.gate-lock'")


def test_models_list_promote_and_runs_compare(stack: Stack,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = "1" if stack.client.get_model_version_by_alias(NAME, CHAMPION).version == "2" \
        else "2"
    assert main(["models", "promote", NAME, other]) == 0
    assert stack.client.get_model_version_by_alias(NAME, CHAMPION).version == other
    assert stack.client.get_model_version(NAME, other).tags["gate.decision"] == "manual"
    capsys.readouterr()
    assert main(["models", "list", NAME]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert "champion" in next(r for r in rows if r.split()[0] == other)
    assert main(["runs", "compare", "--experiment", EXPERIMENT]) == 0
    table = capsys.readouterr().out
    assert "champion: * marks the run" in table and len(table.splitlines()) >= 4


def test_evaluate_scores_the_demo_model(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(stack.root / "out" / "demo" / "model")]) == 0
    assert "naive" in capsys.readouterr().out


def test_tune_logs_nested_trials_on_the_server(stack: Stack) -> None:
    assert main(["tune", "--config", str(stack.cfg_path), "--trials", "2", "--set",
                 "tracking.experiment=sweep", "--set",
                 "tune.space={train.lr: {low: 1e-3, high: 1e-2, log: true}}"]) == 0
    exp = stack.client.get_experiment_by_name("sweep")
    runs = stack.client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tune.sweep") == "true"]
    assert len(parents) == 1 and len(runs) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sum(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
               for r in runs) == 2


def test_batch_forecast_from_the_champion_alias(stack: Stack) -> None:
    out, long = stack.root / "batch.csv", stack.root / "long.csv"
    frame = pd.read_csv(stack.csv, parse_dates=["date"])
    frame.assign(series_id="s").to_csv(long, index=False)
    assert main(["pipeline", "batch-forecast", "--model", f"models:/{NAME}@{CHAMPION}",
                 "--input", str(long), "--timestamp-column", "date", "--output", str(out)]) == 0
    got = pd.read_csv(out)
    expected = champion_forecaster(stack).predict_frame(frame)
    assert got["step"].tolist() == list(range(1, 13))
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), expected[["a", "b"]].to_numpy(),
                               rtol=1e-5)


def test_forecast_serve_answers_from_the_registry(stack: Stack) -> None:
    frame = pd.read_csv(stack.csv).iloc[-48:]
    body = {"series": [{"id": "s", "history": {c: frame[c].tolist() for c in ("a", "b")}}]}
    with Service(f"models:/{NAME}@{CHAMPION}", stack.uri) as svc:
        ready = httpx.get(f"{svc.url}/readyz").json()
        reply = httpx.post(f"{svc.url}/v1/forecast", json=body, timeout=30)
    champion = stack.client.get_model_version_by_alias(NAME, CHAMPION).version
    assert ready["model"] == {"name": NAME, "version": champion, "alias": CHAMPION}
    assert reply.status_code == 200, reply.text
    forecast = reply.json()["forecasts"][0]
    expected = champion_forecaster(stack).predict_frame(frame[["a", "b"]])
    np.testing.assert_allclose(forecast["values"]["a"], expected["a"].to_numpy(), rtol=1e-5)


def test_mlflow_models_serve_answers_from_the_registry(stack: Stack) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": stack.uri,
             "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    frame = pd.read_csv(stack.csv, parse_dates=["date"]).iloc[-60:]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ping", proc)
        as_json = frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        body = {"dataframe_split": as_json.to_dict(orient="split", index=False),
                "params": {"horizon": 4}}
        reply = httpx.post(f"{base}/invocations", json=body, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert reply.status_code == 200, reply.text
    got = pd.DataFrame(reply.json()["predictions"])[["a", "b"]].to_numpy()
    expected = champion_forecaster(stack).predict_frame(frame, 4)[["a", "b"]].to_numpy()
    if not np.allclose(got, expected, rtol=1e-5):
        # say which registered version (if any) the server's answer came from
        versions = stack.client.search_model_versions(f"name = '{NAME}'")
        matches = [v.version for v in versions if np.allclose(
            got, version_forecaster(stack, v.version).predict_frame(frame, 4)[["a", "b"]]
            .to_numpy(), rtol=1e-5)]
        champion = stack.client.get_model_version_by_alias(NAME, CHAMPION).version
        raise AssertionError(f"mlflow models serve answered {got.tolist()}, the champion "
                             f"v{champion} forecasts {expected.tolist()}; versions whose "
                             f"forecast the answer matches: {matches}")
    assert pd.DataFrame(reply.json()["predictions"])["step"].tolist() == [1, 2, 3, 4]


def test_no_metric_row_is_written_twice_and_the_server_never_failed(stack: Stack) -> None:
    # PostgreSQL refuses a whole batch that re-sends a stored metric (key, timestamp, step,
    # value); the server then answers from its retry path. None may happen.
    log, server_log = stack.new_logs()
    assert "duplicate key" not in log, log[-3000:]
    assert " ERROR: " not in log, log[-3000:]
    assert "Traceback" not in server_log, server_log[-3000:]


@BOTH
def test_the_gate_lock_lets_one_challenger_decide_at_a_time(stack: Stack) -> None:
    name, inside, seen = f"race-{stack.backend}", [0], []
    start = threading.Barrier(4)

    def challenger(i: int) -> None:
        client = MlflowClient(tracking_uri=stack.uri, registry_uri=stack.uri)
        start.wait()  # all four ask for the gate at the same moment
        with gate_lock(client, name, f"job-{i}"):
            inside[0] += 1
            seen.append(inside[0])
            time.sleep(0.3)
            inside[0] -= 1

    threads = [threading.Thread(target=challenger, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert seen == [1, 1, 1, 1]  # each entered alone
    assert not stack.client.search_registered_models(f"name = '{name}.gate-lock'")


def test_a_lock_left_by_a_dead_job_is_taken_over(stack: Stack) -> None:
    name = f"stale-{stack.backend}"
    stack.client.create_registered_model(f"{name}.gate-lock")  # its holder died
    began = time.monotonic()
    with gate_lock(stack.client, name, "next-job", wait_s=30, stale_s=1):
        waited = time.monotonic() - began
    assert 1 <= waited < 15
    assert not stack.client.search_registered_models(f"name = '{name}.gate-lock'")
    # a lock held longer than a job may wait is a one-line tracking error (exit 5)
    stack.client.create_registered_model(f"{name}-busy.gate-lock")
    with pytest.raises(TrackingError, match=r"stayed locked for 1s"):  # noqa: SIM117
        with gate_lock(stack.client, f"{name}-busy", "job", wait_s=1, stale_s=60):
            pass
