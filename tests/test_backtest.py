"""`forecast backtest`: cutoffs, windows at each cutoff, scores against forecasts made by hand
from the same history, MLflow logging, refit as nested runs, and bad flags."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from forecast.backtest import cutoff_windows, plan_cutoffs, scaled_rows
from forecast.bundle import load_bundle
from forecast.cli import main
from forecast.config import DataConfig
from forecast.data import SeriesSet, frame_to_series
from forecast.errors import ConfigError
from forecast.predictor import Forecaster
from forecast.scaling import Scaler

L, H = 24, 6  # the tiny model's (tests/conftest.py)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_sets: list[str],
            frame_factory) -> Path:  # noqa: ANN001
    """A tiny model trained by `forecast train` on 400 hourly rows; its run folder."""
    root = tmp_path_factory.mktemp("backtest")
    data = root / "series.csv"
    frame_factory().to_csv(data, index=False)
    config = root / "tiny.yaml"
    config.write_text(f"name: tiny\ndata:\n  path: {data}\n")
    rc, _, err = run_cli(["train", "--config", str(config), "--output-dir", str(root / "runs"),
                          *tiny_sets])
    assert rc == 0, err
    return root / "runs" / "tiny"


def two_series(short_by: int) -> SeriesSet:
    """Series x (100 rows) and y, which ends `short_by` hours earlier."""
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=100, freq="h"),
                          "a": np.arange(100.0)})
    x = frame_to_series(frame, DataConfig(), source="x")
    y = frame_to_series(frame.iloc[: 100 - short_by], DataConfig(), source="y")
    return SeriesSet(["x", "y"], x.values + y.values, x.timestamps + y.timestamps, ["a"], "h")


def test_cutoffs_count_back_from_the_last_time_with_a_whole_horizon_after_it() -> None:
    series = two_series(short_by=10)
    cutoffs = plan_cutoffs(series, 4, 5, L, H)
    # x's last row is hour 99: the last cutoff leaves H steps after it
    assert cutoffs[-1] == pd.Timestamp("2024-01-01") + pd.Timedelta(hours=99 - H)
    assert (cutoffs[1:] - cutoffs[:-1] == pd.Timedelta(hours=5)).all() and len(cutoffs) == 4
    until = plan_cutoffs(series, 2, 5, L, H, until=pd.Timestamp("2024-01-03 12:30"))
    assert until[-1] == pd.Timestamp("2024-01-03 12:00")  # onto the hourly grid


def test_too_many_cutoffs_name_the_flag_and_how_many_fit() -> None:
    series = two_series(short_by=0)
    # cutoffs at hours 93, 88, ...: history needs hour >= 23, so 15 fit
    with pytest.raises(ConfigError, match=r"--cutoffs 16 with --step 5: .* at most 15 cutoffs"):
        plan_cutoffs(series, 16, 5, L, H)


def test_each_series_gives_a_window_only_where_it_holds_history_and_target() -> None:
    series = two_series(short_by=10)  # y lacks the last two cutoffs' targets
    cutoffs = plan_cutoffs(series, 4, 5, L, H)
    data, offsets = scaled_rows(series, Scaler(np.zeros(1), np.ones(1)))
    cut = cutoff_windows(series, data, offsets, cutoffs, 5, L, H)
    assert cut.per_cutoff.tolist() == [2, 2, 1, 1]
    k = torch.arange(len(cut.windows))
    x, y = cut.windows.gather(k)
    numbers = cut.cutoff_numbers(k)
    for window, number in zip(range(len(k)), numbers.tolist(), strict=True):
        hour = (cutoffs[number] - pd.Timestamp("2024-01-01")) // pd.Timedelta(hours=1)
        # the values are the hour numbers: history ends at the cutoff, target follows it
        assert x[window, -1, 0] == hour and y[window, 0, 0] == hour + 1


def test_scores_per_cutoff_equal_forecasts_made_from_that_cutoffs_history(
        trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "bt.csv"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, stdout, err = run_cli(["backtest", "--model", str(trained / "model"), "--cutoffs", "5",
                               "--step", "7", "--out", str(out), "--tracking-uri", uri])
    assert rc == 0, err
    table = pd.read_csv(out, parse_dates=["cutoff"])
    assert set(table["forecaster"]) == {"model", "linear", "seasonal_naive"}
    model_rows = table[table["forecaster"] == "model"].reset_index(drop=True)
    assert len(model_rows) == 5 and (model_rows["windows"] == 1).all()

    frame = pd.read_csv(trained.parent.parent / "series.csv", parse_dates=["date"])
    forecaster = Forecaster(load_bundle(trained / "model"))
    scale = forecaster.bundle.scale
    for _, row in model_rows.iterrows():
        end = int(frame.index[frame["date"] == row["cutoff"]][0]) + 1
        history = frame[["a", "b"]].to_numpy(np.float32)[end - L:end]
        actual = frame[["a", "b"]].to_numpy(np.float64)[end:end + H]
        point, bands = forecaster.predict_quantiles([history], [0.1, 0.9])
        assert row["mse"] == pytest.approx((((point[0] - actual) / scale) ** 2).mean(),
                                           rel=1e-4)
        inside = (actual >= bands[0, ..., 0]) & (actual <= bands[0, ..., 1])
        assert row["coverage_80"] == pytest.approx(inside.mean(), abs=1e-9)

    by_step = pd.read_csv(tmp_path / "bt_by_step.csv")
    assert by_step[by_step["forecaster"] == "model"]["step"].tolist() == list(range(1, H + 1))
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("forecast-backtest")
                              .experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["cutoffs"] == "5"
    assert run.data.metrics["model_mse"] == pytest.approx(model_rows["mse"].mean(), rel=1e-6)
    history = sorted(client.get_metric_history(run.info.run_id, "linear_wql_by_cutoff"),
                     key=lambda m: m.step)
    np.testing.assert_allclose([m.value for m in history],
                               table[table["forecaster"] == "linear"]["wql"], rtol=1e-6)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"bt.csv",
                                                                         "bt_by_step.csv"}
    assert "25 windows" not in stdout and "5 windows at 5 cutoffs" in stdout


def test_refit_trains_at_every_cutoff_as_nested_runs(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "refit.csv"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, _, err = run_cli(["backtest", "--model", str(trained / "model"), "--cutoffs", "2",
                          "--refit", "--out", str(out), "--tracking-uri", uri])
    assert rc == 0, err
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("forecast-backtest")
                               .experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    table = pd.read_csv(out)
    assert len(table) == 6 and (table["windows"] == 1).all()
    # each cutoff's nested run holds that cutoff's scores, and trained epochs of its own
    by_cutoff = {r.data.tags["backtest.cutoff"]: r for r in children}
    for _, row in table[table["forecaster"] == "model"].iterrows():
        child = by_cutoff[str(pd.Timestamp(row["cutoff"]))]
        assert child.data.metrics["model_mse"] == pytest.approx(row["mse"], rel=1e-6)
        assert client.get_metric_history(child.info.run_id, "train_loss")


@pytest.mark.parametrize(("extra", "message"), [
    (["--out", "scores.txt"], "--out 'scores.txt': give a .csv file name"),
    (["--cutoffs", "500"], "--cutoffs 500 with --step 6:"),
    (["--until", "soon"], "--until 'soon' is not a time"),
    (["--until", "1999-01-01"], "--until 1999-01-01 00:00:00: before the data begins"),
    # huge values are refused at once, without a list of a billion cutoffs or an overflow
    (["--cutoffs", "1000000000"], "at most 62 cutoffs fit"),
    (["--step", "1000000000000000"], "--step 1000000000000000: the cutoffs would reach back"),
])
def test_bad_flags_exit_2_naming_the_flag(trained: Path, tmp_path: Path, extra: list[str],
                                          message: str) -> None:
    args = ["backtest", "--model", str(trained / "model"), "--cutoffs", "3",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--out", str(tmp_path / "bt.csv"), *extra]
    rc, _, err = run_cli(args)
    assert rc == 2 and message in err, err
    assert mlflow.active_run() is None


def test_data_with_other_channels_is_refused(trained: Path, tmp_path: Path,
                                             frame_factory) -> None:  # noqa: ANN001
    other = tmp_path / "other.csv"
    frame_factory(channels=["a", "c"]).to_csv(other, index=False)
    rc, _, err = run_cli(["backtest", "--model", str(trained / "model"), "--cutoffs", "2",
                          "--data", str(other), "--out", str(tmp_path / "bt.csv"),
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert rc == 3 and "differ from the model's ['a', 'b']" in err, err


def test_a_registered_version_is_backtested_with_its_training_runs_config(
        registry: str, tmp_path: Path) -> None:
    # no --config: the data path and layout come from the version's run (config.yaml artifact)
    rc, stdout, err = run_cli(["backtest", "--model", "models:/tiny-model@champion",
                               "--cutoffs", "3", "--out", str(tmp_path / "bt.csv"),
                               "--tracking-uri", registry, "--experiment", "bt"])
    assert rc == 0, err
    client = MlflowClient(tracking_uri=registry)
    [run] = client.search_runs([client.get_experiment_by_name("bt").experiment_id])
    assert run.data.params["model_version"] == "1"
    assert run.data.tags["model.uri"] == "models:/tiny-model@champion"
    assert "3 windows at 3 cutoffs" in stdout


def test_refit_from_a_cutoff_too_early_to_train_fails_the_run_and_writes_nothing(
        trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "refit.csv"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the earliest of 60 cutoffs 6 h apart leaves no training rows before its validation
    rc, _, err = run_cli(["backtest", "--model", str(trained / "model"), "--cutoffs", "60",
                          "--step", "6", "--refit", "--out", str(out), "--tracking-uri", uri])
    assert rc == 2 and "--refit at cutoff 2024-01-02 15:00:00" in err, err
    assert "backtest fewer or later cutoffs" in err and not out.exists()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("forecast-backtest")
                               .experiment_id])
    assert {r.info.status for r in runs} == {"FAILED"} and len(runs) == 2
