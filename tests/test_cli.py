"""The `forecast` command line, run in-process through forecast.cli.main."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from forecast.cli import main
from forecast.config import Config
from forecast.errors import DataError

H = 6  # windows.horizon in the tiny --set arguments (conftest.TINY_SETS)


@pytest.fixture(scope="module")
def sets(tiny_sets):
    """The tiny `--set` arguments plus any extra overrides."""
    def with_extra(*extra: str) -> list[str]:
        return [*tiny_sets, *(arg for item in extra for arg in ("--set", item))]
    return with_extra


@pytest.fixture(scope="module")
def make_frame(frame_factory):
    return frame_factory


@dataclass
class TrainedRun:
    data: Path
    run_dir: Path
    rc: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sets, make_frame) -> TrainedRun:
    """One tiny `forecast train` shared by the tests that read its outputs."""
    root = tmp_path_factory.mktemp("cli_train")
    data = root / "series.csv"
    make_frame().to_csv(data, index=False)
    config = root / "tiny.yaml"
    config.write_text("name: tiny\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", "--config", str(config), "--data", str(data),
                   "--output-dir", str(root / "runs"), *sets()])
    return TrainedRun(data, root / "runs" / "tiny", rc, out.getvalue(), err.getvalue())


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_train_writes_model_metrics_config_and_prints_baselines(trained):
    assert trained.rc == 0, trained.stderr
    model_dir = trained.run_dir / "model"
    assert {p.name for p in model_dir.iterdir()} == {"weights.safetensors", "model.json",
                                                     "scaler.json", "calibration.safetensors"}
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    for key in ("test_mse", "test_mase", "baseline_naive_mse", "baseline_seasonal_naive_mse",
                "baseline_linear_mse", "skill_naive", "skill_linear", "best_epoch", "params"):
        assert key in metrics, key
    assert metrics["best_epoch"] == 1
    assert metrics["skill_naive"] == pytest.approx(
        1 - metrics["test_mse"] / metrics["baseline_naive_mse"])
    saved = yaml.safe_load((trained.run_dir / "config.yaml").read_text())
    assert saved["name"] == "tiny"
    assert saved["data"]["path"] == str(trained.data)
    assert saved["model"]["d_model"] == 8 and saved["windows"]["lookback"] == 24
    assert saved["train"]["epochs"] == 1
    meta = json.loads((model_dir / "model.json").read_text())
    assert (meta["lookback"], meta["horizon"], meta["channels"], meta["freq"], meta["season"]) \
        == (24, H, ["a", "b"], "h", 24)

    out = trained.stdout
    assert "trained 1 epochs" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("transformer", "naive", "seasonal_naive", "linear"):
        assert name in rows, out
    assert f"{metrics['test_mse']:.4f}" in rows["transformer"]
    assert f"{metrics['baseline_naive_mse']:.4f}" in rows["naive"]
    assert rows["naive"].rstrip().endswith("%")  # the skill column
    assert f"model:   {trained.run_dir / 'model'}" in out


def test_train_missing_data_file(tmp_path, capsys, sets):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    missing = tmp_path / "absent.csv"
    rc = main(["train", "--config", str(config), "--data", str(missing),
               "--output-dir", str(tmp_path / "runs"), *sets()])
    assert rc == 3
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert str(missing) in line and "not found" in line
    assert not (tmp_path / "runs").exists()


def test_unwritable_output_dir_is_named_before_training(tmp_path, capsys, wide_csv, sets):
    # a file where a folder must go (a read-only folder does the same to a non-root user):
    # it used to train, then end in a NotADirectoryError traceback
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    rc = main(["train", "--config", str(config), "--data", str(wide_csv), "--output-dir",
               str(wide_csv), *sets()])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"output_dir '{wide_csv}/" in line and "cannot be written" in line


def test_debug_flag_shows_the_exception(tmp_path, sets):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    with pytest.raises(DataError, match=r"not found"):
        main(["--debug", "train", "--config", str(config), "--data", str(tmp_path / "no.csv"),
              *sets()])


def test_train_bad_set_key(tmp_path, capsys, wide_csv, sets):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    rc = main(["train", "--config", str(config), "--data", str(wide_csv),
               "--output-dir", str(tmp_path / "runs"), *sets("train.epochz=3")])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.epochz: unknown key" in line


def test_train_huber_delta_with_another_loss_exits_2_before_any_run(tmp_path, capsys, wide_csv,
                                                                    sets):
    (tmp_path / "c.yaml").write_text("name: x\n")
    rc = main(["train", "--config", str(tmp_path / "c.yaml"), "--data", str(wide_csv),
               "--output-dir", str(tmp_path / "runs"),
               *sets("train.loss=mae", "train.huber_delta=0.5")])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.huber_delta (0.5) is the Huber loss's threshold, but train.loss is 'mae'" in line
    assert not (tmp_path / "runs").exists()


def test_train_missing_config_file(tmp_path, capsys, wide_csv):
    rc = main(["train", "--config", str(tmp_path / "none.yaml"), "--data", str(wide_csv)])
    assert rc == 2
    assert "none.yaml" in one_error_line(capsys.readouterr().err)


def test_predict_writes_csv(trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    frame = make_frame()
    frame.tail(40).to_csv(history, index=False)
    out = tmp_path / "pred" / "forecast.csv"
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(out)])
    assert rc == 0
    assert f"wrote {H} rows (1 series x {H} steps) to {out}" in capsys.readouterr().out
    result = pd.read_csv(out)
    assert list(result.columns) == ["series_id", "step", "date", "a", "b"]
    assert result["step"].tolist() == list(range(1, H + 1))
    last = frame["date"].iloc[-1]
    expected = pd.date_range(last, periods=H + 1, freq="h")[1:]
    assert pd.to_datetime(result["date"]).tolist() == list(expected)
    assert result[["a", "b"]].notna().all().all()
    # Forecasts are in original units: channel b lives around 20, channel a around 10.
    assert (result["b"] - result["a"]).mean() > 5


def test_predict_several_series_with_horizon(trained, tmp_path, capsys, make_frame):
    frame = make_frame().tail(30)
    two = pd.concat([frame.assign(series_id="x"), frame.assign(series_id="y")])
    history = tmp_path / "history.parquet"
    two.to_parquet(history, index=False)
    out = tmp_path / "forecast.parquet"
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(out), "--horizon", "3"])
    assert rc == 0
    assert "wrote 6 rows (2 series x 3 steps)" in capsys.readouterr().out
    result = pd.read_parquet(out)
    assert result["series_id"].tolist() == ["x"] * 3 + ["y"] * 3
    # Same history, same forecast.
    pd.testing.assert_frame_equal(
        result[result.series_id == "x"][["a", "b"]].reset_index(drop=True),
        result[result.series_id == "y"][["a", "b"]].reset_index(drop=True))


def test_predict_bad_or_unwritable_output(trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    make_frame().tail(30).to_csv(history, index=False)
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(tmp_path / "new" / "forecast.txt")])
    assert rc == 1
    assert "use a .csv or .parquet file name" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()  # refused before a folder is made for it
    # a folder that cannot be made (here: a file stands in its place) is named, not a traceback
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(history / "forecast.csv")])
    assert rc == 2
    assert f"--out's folder '{history}' cannot be written" in one_error_line(
        capsys.readouterr().err)


def test_predict_out_that_is_a_folder_or_too_long_a_name(trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    make_frame().tail(30).to_csv(history, index=False)
    (tmp_path / "dir.csv").mkdir()
    for out, message in ((tmp_path / "dir.csv", "is a folder; give a file name"),
                         (tmp_path / ("f" * 300 + ".csv"), "the file name is too long")):
        rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history",
                   str(history), "--out", str(out)])
        assert rc == 2  # IsADirectoryError and "File name too long" tracebacks
        assert message in one_error_line(capsys.readouterr().err)


def test_predict_names_the_history_flag_for_a_missing_file(trained, tmp_path, capsys):
    for history, what in ((tmp_path / "nope.csv", "not found"), (tmp_path, "is a folder")):
        rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history",
                   str(history), "--out", str(tmp_path / "f.csv")])
        assert rc == 3
        line = one_error_line(capsys.readouterr().err)  # it said: check data.path or --data
        assert f"data file {str(history)!r} {what}" in line and line.endswith("check --history")


def test_predict_horizon_beyond_the_models_names_the_flag(trained, tmp_path, capsys):
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history",
               str(tmp_path / "never-read.csv"), "--out", str(tmp_path / "f.csv"),
               "--horizon", str(H + 1)])
    assert rc == 2  # it was 3 (a data error) without naming --horizon
    assert one_error_line(capsys.readouterr().err) == (
        f"error: --horizon {H + 1} is beyond the {H} steps the model forecasts; give "
        f"--horizon {H} or less")


def test_predict_history_too_short(trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    make_frame().tail(5).to_csv(history, index=False)
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(tmp_path / "f.csv")])
    assert rc == 3
    assert "5 steps of history; the model needs at least 8" in one_error_line(
        capsys.readouterr().err)


def test_predict_non_numeric_history_is_a_one_line_error(trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    frame = make_frame().tail(30).drop(columns="date").astype({"a": object})
    frame.iloc[4, 0] = "broken"
    frame.to_csv(history, index=False)
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(tmp_path / "f.csv")])
    assert rc == 3
    line = one_error_line(capsys.readouterr().err)
    assert "column 'a' is not numeric: row 5 has 'broken'" in line


def test_evaluate_prints_the_table(trained, capsys):
    rc = main(["evaluate", "--model", str(trained.run_dir / "model")])
    assert rc == 0
    out = capsys.readouterr().out
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(rows) >= {"model", "transformer", "naive", "seasonal_naive", "linear"}
    # The saved model on the same test windows scores what training reported.
    assert f"{metrics['test_mse']:.4f}" in rows["transformer"]
    assert f"{metrics['baseline_seasonal_naive_mse']:.4f}" in rows["seasonal_naive"]
    assert "test windows scored" in out


def test_evaluate_val_block(trained, capsys):
    assert main(["evaluate", "--model", str(trained.run_dir / "model"), "--block", "val"]) == 0
    assert "val windows scored" in capsys.readouterr().out


def test_evaluate_takes_another_season(trained, capsys):
    model = str(trained.run_dir / "model")
    assert main(["evaluate", "--model", model]) == 0
    daily = capsys.readouterr().out
    assert main(["evaluate", "--model", model, "--set", "eval.season=12"]) == 0
    half = capsys.readouterr().out

    def row(out: str, name: str) -> str:
        return next(line for line in out.splitlines() if line.startswith(name))
    # the same forecasts, scored against another seasonal naive and MASE scale (it was ignored)
    assert row(daily, "transformer").split()[1] == row(half, "transformer").split()[1]
    assert row(daily, "seasonal_naive") != row(half, "seasonal_naive")
    assert row(daily, "transformer").split()[5] != row(half, "transformer").split()[5]


@pytest.mark.parametrize("override", ["windows.lookback=12", "windows.horizon=3",
                                      "model.d_model=64"])  # it was silently ignored
def test_evaluate_at_another_lookback_or_horizon_names_the_key(trained, capsys, override):
    # it used to end in a tensor-size RuntimeError traceback
    rc = main(["evaluate", "--model", str(trained.run_dir / "model"), "--set", override])
    assert rc == 2
    key, value = override.split("=")
    err = one_error_line(capsys.readouterr().err)
    assert f"{key} is {value} but the model was trained with" in err


def test_evaluate_without_config(trained, tmp_path, capsys):
    lonely = tmp_path / "lonely" / "model"
    lonely.mkdir(parents=True)
    for f in (trained.run_dir / "model").iterdir():
        (lonely / f.name).write_bytes(f.read_bytes())
    rc = main(["evaluate", "--model", str(lonely)])
    assert rc == 2  # a config file that is not there, as for train (it was 1)
    assert "no config at" in one_error_line(capsys.readouterr().err)


def test_evaluate_on_too_short_data_is_a_data_error_with_a_fix_it_can_take(
        trained, tmp_path, capsys, make_frame):
    short = tmp_path / "short.csv"
    make_frame().tail(20).to_csv(short, index=False)
    rc = main(["evaluate", "--model", str(trained.run_dir / "model"), "--data", str(short)])
    assert rc == 3  # exit 2 advising to shorten the lookback, which a saved model cannot
    line = one_error_line(capsys.readouterr().err)
    assert "too few rows to score this model; give a longer data file" in line
    assert "shorten" not in line


def test_evaluate_refuses_data_at_another_frequency(trained, tmp_path, capsys, make_frame):
    daily = tmp_path / "daily.csv"
    make_frame(freq="D").to_csv(daily, index=False)
    rc = main(["evaluate", "--model", str(trained.run_dir / "model"), "--data", str(daily)])
    assert rc == 3  # it scored the hourly model on daily steps, exit 0
    assert "data frequency 'D' differs from the model's 'h'" in one_error_line(
        capsys.readouterr().err)


@pytest.mark.parametrize("change, said, fix", [
    ({"b": "c"}, "(missing ['b']; ['c'] not in the model)",
     "score a file that holds the model's channels, with "),
    ({"extra": 1.0}, "(['extra'] not in the model)", "pass "),
    ({"order": None}, "(in another order)", "pass "),
])
def test_evaluate_on_other_channels_says_which_and_how_to_select_them(
        trained, tmp_path, capsys, make_frame, change, said, fix):
    frame = make_frame()
    if "b" in change:
        frame = frame.rename(columns=change)
    elif "extra" in change:
        frame = frame.assign(**change)
    else:
        frame = frame[["date", "b", "a"]]
    data = tmp_path / "other.csv"
    frame.to_csv(data, index=False)
    model = str(trained.run_dir / "model")
    assert main(["evaluate", "--model", model, "--data", str(data)]) == 3
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith(f"differ from the model's ['a', 'b'] {said}; {fix}"
                         """--set 'data.columns=["a", "b"]'""")
    if "b" not in change:  # the fix it gives works
        assert main(["evaluate", "--model", model, "--data", str(data),
                     "--set", 'data.columns=["a", "b"]']) == 0


def test_the_channel_fix_survives_a_shell_with_quotes_and_accents() -> None:
    import shlex

    from forecast.config import load_config
    from forecast.data import channel_mismatch

    for want in (["it's", "température"], ["a\x7fb", "c\x85d", "tab\there"]):
        message = channel_mismatch(["x"], want)
        fix = message.split("with ", 1)[1]
        # the quote in it's ended the shell word; the accent came out as \u00e9; raw DEL
        # was refused by YAML and a raw NEL read as a space
        assert "température" in fix or "\\u007f" in fix
        flag, value = shlex.split(fix)
        assert flag == "--set"
        assert load_config(None, [value]).data.columns == want


def test_evaluate_missing_model_dir(tmp_path, capsys):
    rc = main(["evaluate", "--model", str(tmp_path / "nothing")])
    assert rc == 1
    assert "is not a model directory" in one_error_line(capsys.readouterr().err)


def test_config_prints_yaml_with_defaults(capsys):
    assert main(["config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == Config().to_dict()
    assert printed["windows"]["lookback"] == 336 and printed["data"]["missing"] == "error"


def test_config_with_overrides_and_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: mine\nmodel:\n  d_model: 16\n")
    assert main(["config", "--config", str(path), "--set", "train.lr=1e-3",
                 "--set", "model.n_heads=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "mine"
    assert (printed["model"]["d_model"], printed["model"]["n_heads"]) == (16, 2)
    assert printed["train"]["lr"] == 0.001


def test_config_bad_override(capsys):
    assert main(["config", "--set", "model.d_model=30"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "model.d_model (30) must be divisible by model.n_heads (4)" in line


def test_override_that_is_not_yaml_says_how_to_quote_it(capsys):
    # '@' cannot start a plain YAML scalar, yet '@timestamp' is a common column name
    assert main(["config", "--set", "data.timestamp_column=@timestamp"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "override 'data.timestamp_column=@timestamp': the value is not valid YAML" in line
    assert "--set \"data.timestamp_column='@timestamp'\"" in line
    assert main(["config", "--set", "data.timestamp_column='@timestamp'"]) == 0
    assert "timestamp_column: '@timestamp'" in capsys.readouterr().out


def test_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert main(["config", "--config", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"config file '{path}' is not UTF-8 text" in line and "save it as UTF-8" in line


@pytest.mark.slow
def test_demo_prints_skill_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["demo", "--set", "train.epochs=1", "--set", "train.max_windows_per_epoch=256",
               "--set", "tracking.enabled=false", "--output-dir", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "forecast demo: synthetic hourly series" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in ("naive", "seasonal_naive", "linear"):
        assert name in rows, out
        assert rows[name][-1].endswith("%")  # the skill column
    metrics = json.loads((tmp_path / "out" / "demo" / "metrics.json").read_text())
    assert {"skill_naive", "skill_seasonal_naive", "skill_linear"} <= set(metrics)
    assert (tmp_path / "out" / "demo" / "model" / "weights.safetensors").is_file()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["runs", "compare", "--experiment", "x", "--last", "0"], "argument --last: 0 is below 1"),
    (["predict", "--model", "m", "--history", "h.csv", "--out", "o.csv", "--horizon", "two"],
     "argument --horizon: 'two' is not a whole number"),
    (["serve", "--workers", "-1"], "argument --workers: -1 is below 1"),
    (["serve", "--port", "70000"], "argument --port: 70000 is above 65535, the highest TCP port"),
])
def test_counts_on_the_command_line_must_be_positive(
        argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("argv, line", [
    (["train"], "error: forecast train: the following arguments are required: --config; see "
                "`forecast train --help`"),
    (["nosuch"], "error: forecast: argument COMMAND: invalid choice: 'nosuch' (choose from "),
    (["pipeline", "batch-forecast", "--model", "m"], "error: forecast pipeline batch-forecast: "
     "the following arguments are required: --input, --output; see `forecast pipeline "
     "batch-forecast --help`"),
    # a missing subcommand was named by its dest ("pipeline_command"), not by its choices
    ([], "error: forecast: the following arguments are required: COMMAND (one of train, demo, "
         "evaluate, "),
    (["pipeline"], "error: forecast pipeline: the following arguments are required: COMMAND "
                   "(one of train, batch-forecast); see `forecast pipeline --help`"),
    # an unknown flag was reported by `forecast`, whose --help does not list the flags
    (["evaluate", "--model", "m", "--layot", "x"], "error: forecast evaluate: unrecognized "
     "arguments: --layot x; see `forecast evaluate --help`"),
])
def test_usage_errors_are_one_line_like_other_errors(
        argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line)  # the usage block came first


def test_a_usage_error_is_a_json_record_when_the_logs_are_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--log-format", "json", "pipeline", "train", "--confg", "x"])
    assert exit_info.value.code == 2
    record = json.loads(capsys.readouterr().err)
    assert record["message"] == ("error: forecast pipeline train: the following arguments are "
                                 "required: --config; see `forecast pipeline train --help`")
    assert (record["status"], record["exit_code"], record["level"]) == ("failed", 2, "ERROR")


@pytest.mark.parametrize("command", [["demo"], ["train", "--config", "c.yaml"]])
def test_an_empty_output_dir_is_refused_not_read_as_the_default(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # it wrote into ./outputs
        main([*command, "--output-dir", ""])
    assert exit_info.value.code == 2
    assert "argument --output-dir: is empty: give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag, fix", [("--timestamp-column", "a column name"),
                                       ("--id-column", "a column name"),
                                       ("--tracking-uri", "a URI")])
def test_batch_forecast_flags_may_not_be_empty(
        flag: str, fix: str, capsys: pytest.CaptureFixture[str]) -> None:
    # an empty --timestamp-column silently meant the model's column
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "batch-forecast", "--model", "m", "--input", "i.csv", "--output",
              "o.csv", flag, " "])
    assert exit_info.value.code == 2
    assert f"argument {flag}: is empty: give {fix}" in capsys.readouterr().err


def test_config_checks_a_tune_space_as_tune_does(capsys: pytest.CaptureFixture[str]) -> None:
    # it printed a space whose "x" every trial of `forecast tune` would refuse
    assert main(["config", "--set", 'tune.space={train.lr: [1e-3, "x"]}']) == 2
    assert "tune.space: train.lr: Input should be a valid number" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    # (serve shares the flag; on a regression it would start serving instead of failing)
    ["models", "list", "m", "--tracking-uri", " "],
    ["train", "--config", "c.yaml", "--tracking-uri", ""],
    ["pipeline", "batch-forecast", "--model", "m", "--input", "i", "--output", "o",
     "--tracking-uri", ""]])
def test_an_empty_tracking_uri_is_refused_not_read_as_mlflow_db(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "argument --tracking-uri: is empty: give a URI" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--tracking-uri", "--output-dir"])
def test_evaluate_refuses_flags_it_would_ignore(
        flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    # evaluate reads a model and data and writes nothing: accepting these would mislead.
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "m", flag, "x"])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {flag} x" in capsys.readouterr().err


def test_tracking_uri_help_names_the_defaults_that_apply(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve_help = " ".join(capsys.readouterr().out.split())
    assert "$FORECAST_TRACKING_URI, $MLFLOW_TRACKING_URI" in serve_help
    with pytest.raises(SystemExit):
        main(["models", "list", "--help"])
    list_help = " ".join(capsys.readouterr().out.split())
    assert "default: $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db" in list_help
    assert "tracking.uri" not in list_help


def test_bad_service_settings_are_one_line_exit_2_naming_each_variable(monkeypatch, capsys):
    monkeypatch.setenv("FORECAST_API_TOKEN", "")
    monkeypatch.setenv("FORECAST_MAX_SERIES", "0")
    assert main(["serve", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # it used to be pydantic's several-line dump, exit 1
    assert "FORECAST_API_TOKEN: FORECAST_API_TOKEN is set but empty" in err
    assert "; FORECAST_MAX_SERIES: Input should be greater than 0" in err


def test_serve_on_a_port_in_use_is_exit_2_naming_it(trained, capsys):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        rc = main(["serve", "--model", str(trained.run_dir / "model"), "--port", str(port)])
    assert rc == 2  # uvicorn's own log line and exit 3, the code for bad data
    assert f"cannot listen on 127.0.0.1:{port}" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [["models", "list", "m"],
                                     ["runs", "compare", "--experiment", "x"],
                                     ["serve", "--model", "models:/m@champion"]])
def test_commands_that_read_a_store_do_not_create_one(tmp_path, capsys, command):
    db = tmp_path / "nothere.db"
    rc = main([*command, "--tracking-uri", f"sqlite:///{db}"])
    assert rc == 5
    assert f"no database at {str(db)!r}" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # an empty store and its lock file were left behind


def test_an_unreachable_tracking_server_fails_in_seconds(trained, tmp_path, capsys):
    history = tmp_path / "h.csv"
    trained_frame = pd.read_csv(trained.data).tail(30)
    trained_frame.insert(0, "series_id", "s")
    trained_frame.to_csv(history, index=False)
    rc = main(["pipeline", "batch-forecast", "--model", "models:/m@champion", "--input",
               str(history), "--output", str(tmp_path / "o.csv"), "--tracking-uri",
               "http://127.0.0.1:1"])  # it retried for about four minutes
    assert rc == 5
    assert "tracking server http://127.0.0.1:1 is not reachable" in one_error_line(
        capsys.readouterr().err)


def test_a_closed_pipe_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys

    # as `forecast models list NAME | head -1` once head has its line: `true` exits before
    # Python has started, so every write meets a pipe without a reader
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    proc = subprocess.run(f"{sys.executable} -m forecast.cli config | true", shell=True,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0
    assert "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_learning_rate_that_overflows_the_step_is_a_training_error(tmp_path, capsys,
                                                                     wide_csv, sets):
    # 1e38 ended in torch's "value cannot be converted to type float" traceback
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    rc = main(["train", "--config", str(config), "--data", str(wide_csv), "--output-dir",
               str(tmp_path / "out"), *sets("train.lr=1e38", "train.grad_clip=null")])
    assert rc == 4
    err = capsys.readouterr().err
    assert "error: the optimizer step overflowed in epoch 1; lower train.lr" in err
    assert "Traceback" not in err


def test_predict_writes_quantile_and_interval_columns_that_never_cross(
        trained, tmp_path, capsys, make_frame):
    history = tmp_path / "history.csv"
    make_frame().tail(40).to_csv(history, index=False)
    out = tmp_path / "bands.csv"
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(out), "--quantiles", "0.9,0.1,0.5", "--levels", "80"])
    assert rc == 0, capsys.readouterr().err
    result = pd.read_csv(out)
    assert list(result.columns) == [
        "series_id", "step", "date", "a", "b",
        "a-q-10", "a-q-50", "a-q-90", "a-lo-80", "a-hi-80",
        "b-q-10", "b-q-50", "b-q-90", "b-lo-80", "b-hi-80"]
    for c in ("a", "b"):
        assert (result[f"{c}-q-10"] <= result[f"{c}-q-50"]).all()
        assert (result[f"{c}-q-50"] <= result[f"{c}-q-90"]).all()
        assert (result[f"{c}-q-10"] < result[f"{c}-q-90"]).any()
        # the 80% interval is bounded by the 10% and 90% quantiles
        assert np.allclose(result[f"{c}-lo-80"], result[f"{c}-q-10"])
        assert np.allclose(result[f"{c}-hi-80"], result[f"{c}-q-90"])
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    assert 0 < metrics["test_coverage_80"] <= 1 and metrics["test_interval_width_80"] > 0
    assert metrics["test_wql"] > 0  # the quantile loss, logged with every run
    # and the baselines', each with conformal intervals of its own on the same windows
    assert metrics["test_linear_wql"] > 0 and metrics["test_seasonal_naive_wql"] > 0
    assert 0 < metrics["test_linear_coverage_80"] <= 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--levels", "99.9"], "--levels 99.9: 0.0005 is outside"),
    (["--quantiles", "0.5,1.5"], "--quantiles: 1.5 is not between 0 and 1"),
    (["--levels", "eighty"], "--levels: 'eighty' is not a number"),
])
def test_predict_refuses_levels_it_cannot_give_naming_the_flag(
        trained, tmp_path, capsys, make_frame, flags, message):
    history = tmp_path / "history.csv"
    make_frame().tail(40).to_csv(history, index=False)
    out = tmp_path / "bands.csv"
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(out), *flags])
    assert rc == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_serve_with_a_metrics_folder_it_cannot_use_is_exit_2_naming_it(
        trained, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(blocker / "metrics"))
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rc = main(["serve", "--model", str(trained.run_dir / "model"), "--workers", "2",
               "--port", str(port)])  # refused before uvicorn starts
    assert rc == 2
    assert f"PROMETHEUS_MULTIPROC_DIR '{blocker / 'metrics'}'" in one_error_line(
        capsys.readouterr().err)


@pytest.mark.parametrize(("flags", "message"), [
    (["--quantiles", ""], "--quantiles: '' is not a number"),
    (["--levels", " "], "--levels: '' is not a number"),
    (["--quantiles", "nan"], "--quantiles: nan is not between 0 and 1"),
])
def test_predict_refuses_an_empty_or_nan_level(trained, tmp_path, capsys, make_frame, flags,
                                               message):
    history = tmp_path / "history.csv"
    make_frame().tail(40).to_csv(history, index=False)
    rc = main(["predict", "--model", str(trained.run_dir / "model"), "--history", str(history),
               "--out", str(tmp_path / "out.csv"), *flags])
    assert rc == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.csv").exists()
