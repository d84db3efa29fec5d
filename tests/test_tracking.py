"""MLflow tracking, packaging and the registry gate, against a real SQLite store in a temp dir.

One module-scoped history drives most tests: v1 a barely trained model (first → champion),
v2 a trained one (beats v1 and naive → champion), v3 the same config and seed as v2 (equal
score → rejected), then a manual promotion of v1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from forecast.bundle import load_bundle
from forecast.cli import main
from forecast.compare import compare_runs
from forecast.errors import ConfigError, DataError, TrackingError, TrainingError
from forecast.predictor import Forecaster
from forecast.registry import CHALLENGER, CHAMPION, promote
from forecast.tracking import TrackedOutcome, preflight, train_tracked
from tests.tracked import EXPERIMENT, NAME, config, series_csv


@dataclass
class History:
    uri: str
    root: Path
    csv: Path
    runs: list[TrackedOutcome]
    client: MlflowClient


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    csv = series_csv(root / "series.csv")
    runs = [
        # v1: a learning rate so small the model barely moves from its initial weights
        train_tracked(config(root / "r1", csv, train={"lr": 1e-7, "epochs": 1}), uri),
        train_tracked(config(root / "r2", csv), uri),  # v2: properly trained
        train_tracked(config(root / "r3", csv), uri),  # v3: same config and seed as v2
    ]
    return History(uri, root, csv, runs, MlflowClient(tracking_uri=uri, registry_uri=uri))


def test_run_records_params_epoch_metrics_tags_dataset_and_artifacts(history: History) -> None:
    tracked = history.runs[1]
    run = history.client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.d_model"] == "8"
    assert run.data.params["windows.lookback"] == "48"
    assert run.data.params["data.path"] == str(history.csv)
    assert run.info.run_name.startswith("tiny-patchtransformer-L48-H12-")
    for key in ("train_loss", "val_loss", "lr", "epoch_seconds"):
        steps = [m.step for m in history.client.get_metric_history(tracked.run_id, key)]
        assert steps == [1, 2], key
    # the least-squares skip's "epoch 0" starts the validation curve, where best_epoch may be
    solved = train_tracked(config(history.root / "ls", history.csv, model={
        "linear_skip": True, "skip_fit": "least_squares"}, tracking={"auto_register": False}),
        history.uri)
    curve = history.client.get_metric_history(solved.run_id, "val_loss")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 1, 2]
    assert min(curve, key=lambda m: m.value).step == solved.outcome.fit.best_epoch
    assert [m for m in curve if m.step == 0][0].value == pytest.approx(
        solved.outcome.fit.linear_val_loss)
    metrics = run.data.metrics
    for key in ("test_mse", "test_mae", "test_mase", "test_smape", "baseline_naive_mse",
                "baseline_seasonal_naive_mse", "baseline_linear_mse", "skill_naive"):
        assert key in metrics, key
    assert metrics["test_mse"] == pytest.approx(tracked.outcome.evaluation.model.mse)
    assert metrics["skill_naive"] == pytest.approx(
        1 - metrics["test_mse"] / metrics["baseline_naive_mse"])
    import hashlib

    assert run.data.tags["data.sha256"] == hashlib.sha256(history.csv.read_bytes()).hexdigest()
    assert run.data.tags["forecast.version"]
    assert run.data.tags["model.version"] == "2"
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "series.csv"
    artifacts = {a.path for a in history.client.list_artifacts(tracked.run_id)}
    assert {"config.yaml", "forecast_vs_actual.png", "error_per_step.csv", "error_per_step.png",
            "training_curve.png"} <= artifacts
    local = mlflow.artifacts.download_artifacts(run_id=tracked.run_id,
                                                artifact_path="error_per_step.csv",
                                                tracking_uri=history.uri)
    per_step = pd.read_csv(local)
    assert len(per_step) == 12
    assert per_step["transformer_mse"].mean() == pytest.approx(metrics["test_mse"], rel=1e-6)
    # interval coverage per horizon step: a CSV column and a metric whose steps are 1..H
    assert per_step["transformer_coverage_80"].mean() == pytest.approx(
        metrics["test_coverage_80"], rel=1e-5)
    by_step = sorted(history.client.get_metric_history(tracked.run_id,
                                                       "test_coverage_80_by_step"),
                     key=lambda m: m.step)
    assert [m.step for m in by_step] == list(range(1, 13))
    np.testing.assert_allclose([m.value for m in by_step],
                               per_step["transformer_coverage_80"], rtol=1e-6)


def test_gate_promotes_only_a_better_challenger_and_tags_both_scores(history: History) -> None:
    c = history.client
    v1, v2, v3 = (c.get_model_version(NAME, str(i)) for i in (1, 2, 3))
    assert v1.tags["gate.decision"] == "promoted"
    assert v1.tags["gate.reason"].startswith("first model")
    assert v2.tags["gate.decision"] == "promoted"
    assert v2.tags["gate.champion_version"] == "1"
    assert float(v2.tags["gate.challenger_score"]) < float(v2.tags["gate.champion_score"])
    # v3 equals v2 (same config, same seed): not strictly better, so v2 stays champion
    assert v3.tags["gate.decision"] == "rejected"
    assert v3.tags["gate.champion_version"] == "2"
    assert float(v3.tags["gate.challenger_score"]) == pytest.approx(
        float(v3.tags["gate.champion_score"]), rel=1e-5)
    model = c.get_registered_model(NAME)
    assert model.aliases[CHALLENGER] in (3, "3")
    assert model.aliases[CHAMPION] in (2, "2")
    # the champion was re-scored now, on v3's windows: the same number v2 scored for itself
    assert float(v3.tags["gate.champion_score"]) == pytest.approx(
        float(v2.tags["gate.challenger_score"]), rel=1e-5)
    run3 = c.get_run(history.runs[2].run_id)
    assert run3.data.tags["gate.decision"] == "rejected"
    assert run3.data.metrics["gate_promoted"] == 0.0


def test_manual_promotion_is_recorded_and_listed(history: History,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    previous = promote(history.client, NAME, "1")
    assert previous == "2"
    v1 = history.client.get_model_version(NAME, "1")
    assert v1.tags["gate.decision"] == "manual"
    reason = v1.tags["gate.reason"]
    # promoting the champion again changes nothing, and says so
    assert main(["models", "promote", NAME, "1", "--tracking-uri", history.uri]) == 0
    assert f"{NAME} v1 is already champion; nothing changed" in capsys.readouterr().out
    # MLflow reads "01" as 1: it re-promoted the champion, overwriting its record
    assert main(["models", "promote", NAME, "01", "--tracking-uri", history.uri]) == 0
    assert f"{NAME} v1 is already champion; nothing changed" in capsys.readouterr().out
    for odd in (" 1", "+1", "0", "²", "٢", "99999999999999999999"):  # ² was a traceback
        assert main(["models", "promote", NAME, odd, "--tracking-uri", history.uri]) == 1
        assert f"version {odd!r} is not a version number" in capsys.readouterr().err
    assert history.client.get_model_version(NAME, "1").tags["gate.reason"] == reason
    assert "replacing v2" in v1.tags["gate.reason"]
    assert main(["models", "list", NAME, "--tracking-uri", history.uri]) == 0
    out = capsys.readouterr().out
    line_v1 = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "champion" in line_v1 and "manual" in line_v1
    # a mistyped name or number is the user's error (1), not an unusable store (5)
    assert main(["models", "promote", NAME, "9", "--tracking-uri", history.uri]) == 1
    assert "has no version '9'" in capsys.readouterr().err
    assert main(["models", "promote", "nope", "1", "--tracking-uri", history.uri]) == 1
    assert "no registered model named 'nope'" in capsys.readouterr().err  # "has no version '1'"
    assert main(["models", "list", "nope", "--tracking-uri", history.uri]) == 1
    assert f"no registered model named 'nope' in the tracking store {history.uri}" in \
        capsys.readouterr().err
    assert main(["runs", "compare", "--experiment", "nope", "--tracking-uri", history.uri]) == 1
    assert "no experiment named 'nope'" in capsys.readouterr().err
    promote(history.client, NAME, "2")  # put things back for the tests that follow


def test_pyfunc_round_trip_equals_in_process_prediction_without_pickle(
        history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", history.uri)
    tracked = history.runs[1]
    frame = pd.read_csv(history.csv, parse_dates=["date"]).iloc[-60:]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/2")
    remote = pyfunc.predict(frame, params={"horizon": 5})
    forecaster = Forecaster(load_bundle(tracked.outcome.model_dir))
    local = forecaster.predict_frame(frame, 5, levels=[0.8, 0.95])
    # the calibrated 80% and 95% intervals by default
    assert list(remote.columns) == [
        "series_id", "step", "date", "a", "b", "a-lo-80", "a-hi-80", "a-lo-95", "a-hi-95",
        "b-lo-80", "b-hi-80", "b-lo-95", "b-hi-95"]
    assert len(remote) == 5
    np.testing.assert_allclose(remote[local.columns[3:]].to_numpy(dtype=float),
                               local[local.columns[3:]].to_numpy(dtype=float), rtol=1e-6)
    asked = pyfunc.predict(frame, params={"quantiles": "0.1,0.9", "levels": ""})
    assert list(asked.columns)[5:] == ["a-q-10", "a-q-90", "b-q-10", "b-q-90"]
    assert (asked["a-q-10"] <= asked["a-q-90"]).all()
    assert (pd.to_datetime(remote["date"]) == pd.date_range(
        pd.Timestamp(frame["date"].iloc[-1]) + pd.Timedelta(hours=1), periods=5, freq="h")).all()


def test_runs_compare_shows_comparable_rows_with_champion_marker(
        history: History, capsys: pytest.CaptureFixture[str]) -> None:
    table = compare_runs(history.uri, EXPERIMENT, 10)
    assert len(table) >= 3
    assert list(table["champion"]).count("*") == 1
    champ_run = history.client.get_model_version_by_alias(NAME, CHAMPION).run_id
    marked = table.loc[table["champion"] == "*", "run"].tolist()
    assert history.client.get_run(champ_run).info.run_name in marked
    assert {"test_mse", "skill_naive", "d_model", "lookback"} <= set(table.columns)
    # interval coverage beside the point scores, as logged by each run
    champ = table.loc[table["champion"] == "*"].iloc[0]
    logged = history.client.get_run(champ_run).data.metrics
    assert champ["test_coverage_80"] == round(logged["test_coverage_80"], 4)
    assert 0 < champ["test_coverage_80"] <= 1
    assert main(["runs", "compare", "--experiment", EXPERIMENT, "--last", "3",
                 "--tracking-uri", history.uri]) == 0
    out = capsys.readouterr().out
    assert out.count("tiny-patchtransformer-L48-H12-") == 3


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_versions(client: MlflowClient) -> int:
    return len(client.search_model_versions(f"name = '{NAME}'"))


def test_failing_run_is_failed_with_error_tag_and_registers_nothing(history: History) -> None:
    before = _no_versions(history.client)
    bad = history.root / "bad.csv"
    frame = pd.read_csv(history.csv)
    frame["b"] = frame["b"].astype(object)
    frame.loc[100, "b"] = "oops"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match="column 'b' is not numeric"):
        train_tracked(config(history.root, bad), history.uri)
    with pytest.raises(TrainingError, match="lower train.lr"):
        train_tracked(config(history.root, history.csv,
                             train={"lr": 1e30, "grad_clip": None}), history.uri)
    exp = history.client.get_experiment_by_name(EXPERIMENT)
    failed = history.client.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    errors = sorted(r.data.tags["error"] for r in failed)
    assert len(failed) == 2
    assert errors[0].startswith("DataError: ") and "'oops'" in errors[0]
    assert errors[1].startswith("TrainingError: ")
    assert _no_versions(history.client) == before


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "team\\fc"])
def test_models_list_finds_names_with_quotes_and_backslashes(
        history: History, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # registered outside this tool (its configs refuse quotes); MLflow's filters take no escapes
    history.client.create_registered_model(name)
    run_id = history.runs[0].run_id
    history.client.create_model_version(name, history.runs[0].model_uri, run_id)
    assert main(["models", "list", name, "--tracking-uri", history.uri]) == 0
    assert run_id in capsys.readouterr().out


def test_models_list_refuses_a_name_with_both_quotes(
        history: History, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "it's \"x\"", "--tracking-uri", history.uri]) == 1
    assert "which an MLflow search cannot match" in capsys.readouterr().err


def test_run_failing_after_training_leaves_the_last_local_model_whole(
        history: History, tmp_path: Path) -> None:
    good = train_tracked(config(tmp_path, history.csv, tracking={"auto_register": False}),
                         history.uri)
    folder = tmp_path / "outputs" / "tiny"
    assert good.outcome.model_dir == folder / "model"
    listing = sorted(p.name for p in folder.iterdir())
    assert listing == [".publish.lock", "checkpoints", "config.yaml", "metrics.json", "model"]
    files = {p: p.read_bytes() for p in [*(folder / "model").iterdir(), folder / "metrics.json"]}
    # an artifact store that cannot be written: the run fails after training, when it logs
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    history.client.create_experiment("unwritable-artifacts",
                                     artifact_location=(blocker / "artifacts").as_uri())
    with pytest.raises(TrackingError, match="cannot be written"):  # exit 5, one line
        train_tracked(config(tmp_path, history.csv, train={"seed": 1}, tracking={
            "experiment": "unwritable-artifacts", "auto_register": False}), history.uri)
    exp = history.client.get_experiment_by_name("unwritable-artifacts")
    [failed] = history.client.search_runs([exp.experiment_id])
    assert failed.info.status == "FAILED" and "test_mse" in failed.data.metrics
    # the failed run's model (seed 1) replaced nothing, and left no staging folder behind
    assert sorted(p.name for p in folder.iterdir()) == listing
    assert {p: p.read_bytes() for p in files} == files


def _preflight_in_process(uri: str) -> None:
    preflight(uri, timeout=10)


def test_jobs_starting_at_once_on_a_new_sqlite_store_do_not_break_it(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for attempt in range(2):  # unlocked, MLflow's table creation raced every time (6 of 6)
        uri = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        jobs = [ctx.Process(target=_preflight_in_process, args=(uri,)) for _ in range(2)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(120)
        assert [job.exitcode for job in jobs] == [0, 0]
        MlflowClient(tracking_uri=uri).search_experiments()  # and the store stays usable


def test_a_deleted_experiment_is_named_as_deleted(
        history: History, capsys: pytest.CaptureFixture[str]) -> None:
    gone = history.client.create_experiment("gone")
    history.client.create_run(gone)
    history.client.delete_experiment(gone)
    with pytest.raises(ConfigError, match=r"tracking.experiment 'gone' is deleted in .*; restore"
                                          rf" it \(`mlflow experiments restore --experiment-id "
                                          rf"{gone}`\) or name another"):
        train_tracked(config(history.root, history.csv, tracking={"experiment": "gone"}),
                      history.uri)  # it was exit 5, "store unusable"
    # it was "has no runs", exit 0
    assert main(["runs", "compare", "--experiment", "gone", "--tracking-uri", history.uri]) == 1
    assert "experiment 'gone' in" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(TrackingError, match="not reachable"):
        preflight("http://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - started < 10
    folder = tmp_path / "missing" / "mlflow.db"
    with pytest.raises(TrackingError, match="does not exist or is not writable"):
        preflight(f"sqlite:///{folder}", timeout=2)


@pytest.mark.parametrize("form", ["plain", "file://", "file:", "file://localhost"])
@pytest.mark.parametrize("exists", [False, True])
def test_a_folder_store_is_refused_with_the_database_uri_to_use(tmp_path: Path, form: str,
                                                                exists: bool, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    if exists:
        folder.mkdir()
    uri = {"plain": str(folder), "file://": f"file://{folder}", "file:": f"file:{folder}",
           "file://localhost": f"file://localhost{folder}"}[form]
    # it ended with MLflow's paragraph on the file store's "maintenance mode"
    with pytest.raises(TrackingError) as info:
        preflight(uri, timeout=2)
    keep = (" (its runs: `mlflow migrate-filestore` moves them into a database, or "
            "MLFLOW_ALLOW_FILE_STORE=true keeps using the folder)") if exists else ""
    assert str(info.value) == (
        f"tracking store {uri} is a folder, which MLflow 3 does not track into by default: pass "
        f"a database, e.g. sqlite:///{folder}.db, or an http(s):// tracking server{keep}")
    assert folder.exists() == exists


def test_a_database_or_file_path_store_is_not_called_a_folder(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    db, csv = tmp_path / "runs.db", tmp_path / "data.csv"
    csv.write_text("a\n1\n")
    with pytest.raises(TrackingError) as info:  # the user left out sqlite:///
        preflight(str(db), timeout=2)
    assert str(info.value) == (f"tracking store {db} is a path, not a tracking URI: pass "
                               f"sqlite:///{db} for that SQLite database, or an http(s):// "
                               "tracking server")
    with pytest.raises(TrackingError) as info:
        preflight(str(csv), timeout=2)
    assert str(info.value) == (f"tracking store {csv} is a file, not a tracking store: pass a "
                               "database URI, e.g. sqlite:///mlflow.db, or an http(s):// "
                               "tracking server")


def test_other_failures_of_a_path_store_keep_their_own_message(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(TrackingError) as info:  # it was called "a folder" too
        preflight(str(afile), timeout=2)
    assert str(info.value).startswith(f"tracking store {afile} cannot be used: ")
    assert "is a folder" not in str(info.value)


def _venv_env(uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = uri
    # `mlflow models serve --env-manager local` starts uvicorn from PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_ctrl_c_ends_the_run_killed(history: History) -> None:
    cfg = config(history.root, history.csv, train={"epochs": 200, "max_windows_per_epoch": 256})
    cfg_path = history.root / "long.yaml"
    from forecast.config import dump_config

    cfg_path.write_text(dump_config(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "forecast.cli", "train", "--config", str(cfg_path),
         "--tracking-uri", history.uri, "--set", "tracking.experiment=killed"],
        env=_venv_env(history.uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        run = None
        while time.time() < deadline:
            exp = history.client.get_experiment_by_name("killed")
            runs = history.client.search_runs([exp.experiment_id]) if exp else []
            if runs and history.client.get_metric_history(runs[0].info.run_id, "val_loss"):
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None, "no epoch was logged in time"
        proc.send_signal(2)  # SIGINT, as Ctrl-C sends
        code = proc.wait(timeout=60)
        assert code == 130, proc.stdout.read().decode()[-3000:] if proc.stdout else code
    finally:
        proc.kill()
    assert history.client.get_run(run.info.run_id).info.status == "KILLED"
    assert "interrupted" in history.client.get_run(run.info.run_id).data.tags["error"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(history: History, free_port: int) -> None:
    env = _venv_env(history.uri)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
         f"models:/{NAME}@{CHAMPION}", "--env-manager", "local", "--host", "127.0.0.1",
         "--port", str(free_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import httpx

    try:
        base = f"http://127.0.0.1:{free_port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.5)
        frame = pd.read_csv(history.csv, parse_dates=["date"]).iloc[-60:]
        as_json = frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        body = {"dataframe_split": as_json.to_dict(orient="split", index=False),
                "params": {"horizon": 4}}
        reply = httpx.post(f"{base}/invocations", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        got = pd.DataFrame(reply.json()["predictions"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    champion = history.client.get_model_version_by_alias(NAME, CHAMPION)
    model_dir = history.runs[int(champion.version) - 1].outcome.model_dir
    expected = Forecaster(load_bundle(model_dir)).predict_frame(frame, 4)
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), expected[["a", "b"]].to_numpy(),
                               rtol=1e-5)
    assert got["step"].tolist() == [1, 2, 3, 4]


def test_a_model_too_big_for_memory_fails_its_run_with_a_one_line_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the address space is capped so that the allocation fails here, as it would on a small host
    limit = 4 * 2**30
    script = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))"
              "\nfrom forecast.cli import main\nsys.exit(main(sys.argv[1:]))")
    config_path = tmp_path / "big.yaml"
    config_path.write_text(
        "name: big\nmodel: {d_model: 4096, n_layers: 64, d_ff: 16384, patch_len: 24}\n"
        "windows: {lookback: 168, horizon: 24}\ntracking: {experiment: big}\n")
    proc = subprocess.run(
        [sys.executable, "-c", script, "train", "--config", str(config_path),
         "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri],
        capture_output=True, text=True, timeout=300, env=_venv_env(uri), cwd=tmp_path,
        check=False)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr  # it was a torch traceback
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: out of memory building or training the model (")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("big").experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_registered_models() == []


def test_a_tracked_run_logs_no_library_warnings_or_progress_bars(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, series_csv(tmp_path / "series.csv"))
    from forecast.config import dump_config

    (tmp_path / "tiny.yaml").write_text(dump_config(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "forecast.cli", "train", "--config", str(tmp_path / "tiny.yaml"),
         "--tracking-uri", uri], capture_output=True, text=True, timeout=300,
        env=_venv_env(uri), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a cron job's log: MLflow's dataset-source and schema-hint warnings and its artifact
    # download bars filled it on every run
    for noise in ("Warning", "Downloading artifacts"):
        assert noise not in proc.stderr, proc.stderr


def test_an_artifact_store_that_cannot_be_written_is_exit_5_run_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlartifacts").write_text("")  # a file where the store's folder goes
    cfg = config(tmp_path, series_csv(tmp_path / "series.csv"), train={"epochs": 1})
    with pytest.raises(TrackingError) as info:  # it was a NotADirectoryError traceback, exit 1
        train_tracked(cfg, uri)
    assert info.value.exit_code == 5
    message = str(info.value)
    assert message.startswith(f"artifact store file://{tmp_path}/mlartifacts/")
    assert "cannot be written at" in message and "(Not a directory)" in message
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_registered_models() == []


@pytest.mark.parametrize("ends", [False, True])
def test_a_run_left_open_by_an_interrupted_command_is_not_marked_finished(
        tmp_path: Path, ends: bool) -> None:
    # A second SIGTERM can cut the closing of a failed run short. MLflow's exit handler then
    # marks the still-open run FINISHED, and the next pipeline job skips training, taking it
    # for a success; the command's last step ends such runs as what happened instead.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import sys, mlflow\n"
              "from forecast.tracking import end_open_runs\n"
              f"mlflow.set_tracking_uri({uri!r})\n"
              "print(mlflow.start_run().info.run_id)\n"
              f"if {ends}: end_open_runs('KILLED')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if not k.startswith("MLFLOW_")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    run = MlflowClient(tracking_uri=uri).get_run(out.split()[-1])
    assert run.info.status == ("KILLED" if ends else "FINISHED")
    if ends:
        assert run.data.tags["error"] == "the command stopped before this run was closed"
