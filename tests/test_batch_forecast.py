"""The batch-forecast pipeline against real files and real tiny models: a bundle directory
trained here, and a registered version in a temp SQLite MLflow store.

Every forecast is checked against `Forecaster.predict_frame` on the same histories."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from forecast.bundle import load_bundle
from forecast.cli import main
from forecast.errors import ConfigError, DataError, ForecastError, TrackingError
from forecast.predictor import Forecaster
from forecast.registry import ModelSource, load_version_forecaster
from pipelines.batch_forecast import BatchOptions, BatchSummary, batch_forecast
from tests.batch_files import LENGTHS, H, bad_frame, long_frame, write
from tests.conftest import make_frame
from tests.tracked import NAME

OUTPUT_COLUMNS = ["series_id", "forecast_origin", "step", "timestamp", "a", "b", "model_name",
                  "model_version"]


@pytest.fixture(scope="module")
def forecaster(model_dir: Path) -> Forecaster:
    return Forecaster(load_bundle(model_dir))


def read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"series_id": str, "model_version": str},
                           parse_dates=["forecast_origin", "timestamp"])
    return pd.read_parquet(path)


def run(model: Path | str, inp: Path, out: Path, **kw) -> tuple[BatchSummary, pd.DataFrame]:
    summary = batch_forecast(BatchOptions(model=str(model), input=inp, output=out, **kw))
    return summary, read(out)


def assert_matches(got: pd.DataFrame, expected: pd.DataFrame, channels: list[str]) -> None:
    """`got` (batch output) holds the same forecasts as `expected` (predict_frame output)."""
    assert got["series_id"].tolist() == expected["series_id"].tolist()
    assert got["step"].tolist() == expected["step"].tolist()
    assert list(got["timestamp"]) == list(expected["date"])
    np.testing.assert_allclose(got[channels].to_numpy(), expected[channels].to_numpy(),
                               rtol=1e-5, atol=1e-5)


def test_long_csv_forecasts_equal_predict_frame(model_dir, forecaster, tmp_path):
    frame = long_frame()
    inp = write(frame, tmp_path / "series.csv")
    summary, got = run(model_dir, inp, tmp_path / "forecasts.parquet")
    assert list(got.columns) == OUTPUT_COLUMNS
    assert_matches(got, forecaster.predict_frame(frame), ["a", "b"])
    last = frame.groupby("series_id", sort=False)["date"].max()
    assert list(got["forecast_origin"]) == list(last.repeat(H))
    assert set(got["model_name"]) == {"model"} and set(got["model_version"]) == {"local"}
    assert (summary.series_forecast, summary.series_skipped, summary.rows) == (7, 0, 7 * H)
    assert summary.errors_file is None and summary.peak_rss_mb > 0
    assert summary.series_per_second == pytest.approx(7 / summary.seconds, rel=0.05)


def test_known_hourly_series_origin_and_timestamps(model_dir, forecaster, tmp_path):
    part = make_frame(n=30, start="2024-03-01 00:00")  # last row: 2024-03-02 05:00
    part.insert(0, "series_id", "shop-1")
    _, got = run(model_dir, write(part, tmp_path / "one.csv"), tmp_path / "out.csv")
    assert list(got.columns) == OUTPUT_COLUMNS
    assert got["series_id"].tolist() == ["shop-1"] * H
    assert got["step"].tolist() == list(range(1, H + 1))
    assert set(got["forecast_origin"]) == {pd.Timestamp("2024-03-02 05:00")}
    assert list(got["timestamp"]) == list(pd.date_range("2024-03-02 06:00", periods=H, freq="h"))
    expected = forecaster.predict_arrays([part[["a", "b"]].to_numpy(np.float32)])[0]
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_timestamps_with_offsets_give_utc_times_that_say_so(model_dir, tmp_path, suffix):
    part = make_frame(n=30, start="2024-03-01 00:00")  # last row: 2024-03-02 05:00
    part.insert(0, "series_id", "shop-1")
    part["date"] = part["date"].dt.tz_localize("Asia/Tokyo")  # 05:00+09:00 = 20:00 UTC
    if suffix == ".csv":
        part["date"] = part["date"].astype(str)
    _, got = run(model_dir, write(part, tmp_path / f"one{suffix}"), tmp_path / "out.parquet")
    # they were written 20:00 and 21:00 with no zone: read as Tokyo time, nine hours off
    assert set(got["forecast_origin"]) == {pd.Timestamp("2024-03-01 20:00", tz="UTC")}
    assert list(got["timestamp"]) == list(pd.date_range("2024-03-01 21:00", periods=H,
                                                        freq="h", tz="UTC"))


def test_a_header_naming_a_column_twice_is_refused(mono_dir, tmp_path):
    inp = tmp_path / "in.csv"
    frame = make_frame(n=30, channels=["a"])
    frame.insert(2, "a2", frame["a"])
    frame.to_csv(inp, index=False)
    inp.write_text(inp.read_text().replace("a2", "a", 1))  # date,a,a
    with pytest.raises(DataError, match=r"the header names \['a'\] more than once"):
        run(mono_dir, inp, tmp_path / "out.csv", layout="wide")  # it forecast 'a.1' too


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory, forecaster: Forecaster
         ) -> tuple[Path, pd.DataFrame]:
    """A long Parquet file of 20 series, rows shuffled within each series, and the expected
    forecasts."""
    frame = long_frame([8 + 7 * i for i in range(20)], prefix="id-")
    shuffled = frame.groupby("series_id", sort=False, group_keys=False).sample(
        frac=1.0, random_state=0)
    path = write(shuffled, tmp_path_factory.mktemp("many") / "many.parquet")
    return path, forecaster.predict_frame(frame)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
@pytest.mark.parametrize("read_rows", [5, 37, 100_000])
def test_chunk_boundaries_do_not_change_results(model_dir, many, tmp_path, chunk_size,
                                                read_rows):
    # read_rows 5 and 37 split most series across read chunks; 100_000 reads the file at once
    path, expected = many
    _, got = run(model_dir, path, tmp_path / "out.parquet", chunk_size=chunk_size,
                 read_rows=read_rows)
    assert_matches(got, expected, ["a", "b"])


def test_csv_and_parquet_output_hold_the_same_rows(model_dir, many, tmp_path):
    path, _ = many
    _, parquet = run(model_dir, path, tmp_path / "out.parquet", chunk_size=7)
    _, csv = run(model_dir, path, tmp_path / "out.csv", chunk_size=7)
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False, check_exact=False,
                                  rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_wide_layout_single_channel(mono_dir, tmp_path, suffix):
    wide = make_frame(n=40, channels=["north", "south", "east", "west", "up"], seed=3)
    inp = write(wide, tmp_path / f"wide{suffix}")
    _, got = run(mono_dir, inp, tmp_path / "out.parquet", layout="wide", chunk_size=2,
                 read_rows=30)  # few rows per read: the last 24 rows span read chunks
    long = wide.melt(id_vars="date", var_name="series_id", value_name="a")
    expected = Forecaster(load_bundle(mono_dir)).predict_frame(long)
    assert got["series_id"].unique().tolist() == ["north", "south", "east", "west", "up"]
    assert list(got.columns) == [c for c in OUTPUT_COLUMNS if c != "b"]
    assert set(got["forecast_origin"]) == {wide["date"].iloc[-1]}
    assert_matches(got, expected, ["a"])


def test_wide_layout_reasons_name_the_files_column_not_the_models_channel(mono_dir, tmp_path):
    wide = make_frame(n=40, channels=["north", "south"], seed=3)
    wide.loc[35, "north"] = np.nan
    summary, got = run(mono_dir, write(wide, tmp_path / "w.csv"), tmp_path / "o.csv",
                       layout="wide")
    assert summary.series_skipped == 1 and got["series_id"].unique().tolist() == ["south"]
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert errors.to_dict("records") == [{
        "series_id": "north",
        "reason": f"column 'north' is missing a value at {wide['date'].iloc[35]} (1 missing in "
                  "all); send a value for every step (a forecast fills no gaps)"}]


def test_wide_layout_needs_a_single_channel_model(model_dir, tmp_path):
    inp = write(make_frame(n=40), tmp_path / "wide.csv")
    with pytest.raises(DataError, match=r"the model has channels \['a', 'b'\]; use --layout "
                       r"long with columns series_id, date, a, b"):
        batch_forecast(BatchOptions(str(model_dir), inp, tmp_path / "o.parquet", layout="wide"))


def no_output(folder: Path, name: str) -> None:
    assert not (folder / name).exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("read_rows", [5, 100_000])
def test_non_contiguous_ids_are_a_data_error(model_dir, tmp_path, read_rows):
    frame = long_frame([30, 30, 30])
    frame = pd.concat([frame.iloc[:15], frame.iloc[30:], frame.iloc[15:30]], ignore_index=True)
    inp = write(frame, tmp_path / "mixed.csv")
    with pytest.raises(DataError) as err:
        run(model_dir, inp, tmp_path / "out.parquet", read_rows=read_rows)
    msg = str(err.value)
    assert "series 's0' appears again at row 76" in msg
    assert "sort the file by 'series_id'" in msg
    no_output(tmp_path, "out.parquet")


def test_failure_midway_leaves_no_partial_output(model_dir, tmp_path, caplog):
    # The reappearing id comes after several chunks were written to the temp file.
    frame = long_frame([30] * 6)
    frame = pd.concat([frame, frame[frame["series_id"] == "s1"]], ignore_index=True)
    out = tmp_path / "out.csv"
    out.write_text("yesterday's forecasts\n")
    with caplog.at_level(logging.INFO, logger="pipelines.batch_forecast"), \
            pytest.raises(DataError, match=r"series 's1' appears again at row 181"):
        run(model_dir, write(frame, tmp_path / "in.parquet"), out, chunk_size=1, read_rows=40)
    assert "chunk 3: 3 series done" in caplog.text  # rows had been written before the error
    assert out.read_text() == "yesterday's forecasts\n"  # the old file, untouched
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_bad_series_are_skipped_and_listed(model_dir, forecaster, tmp_path, caplog):
    frame, reasons = bad_frame()
    inp = write(frame, tmp_path / "in.csv")
    out = tmp_path / "out.parquet"
    with caplog.at_level(logging.WARNING, logger="pipelines.batch_forecast"):
        summary, got = run(model_dir, inp, out, chunk_size=4, read_rows=50)
    assert "5 series skipped (bad data)" in caplog.text
    errors = pd.read_csv(tmp_path / "out.errors.csv", dtype=str)
    assert summary.errors_file == str(tmp_path / "out.errors.csv")
    assert (summary.series_forecast, summary.series_skipped) == (2, 5)
    assert sorted(errors["series_id"]) == sorted(reasons)
    for sid, reason in zip(errors["series_id"], errors["reason"], strict=True):
        assert reasons[sid] in reason, (sid, reason)
        assert "data." not in reason, reason  # a batch job has no data settings to change
    good = long_frame([30] * 7)
    good = good[good["series_id"].isin(["s0", "s6"])]
    assert_matches(got, forecaster.predict_frame(good), ["a", "b"])
    # A clean run to the same output removes the stale list of bad series.
    run(model_dir, write(good, tmp_path / "good.csv"), out)
    assert not (tmp_path / "out.errors.csv").exists()


def test_a_series_whose_forecast_overflows_is_skipped_not_the_job(model_dir, forecaster,
                                                                   tmp_path):
    frame = long_frame([30] * 3)
    big = frame["series_id"] == "s1"
    frame.loc[big, ["a", "b"]] = frame.loc[big, ["a", "b"]] * 1e30  # finite, far off scale
    summary, got = run(model_dir, write(frame, tmp_path / "in.csv"), tmp_path / "out.csv")
    assert (summary.series_forecast, summary.series_skipped) == (2, 1)  # it stopped the job
    errors = pd.read_csv(tmp_path / "out.errors.csv", dtype=str)
    assert errors["series_id"].tolist() == ["s1"]
    assert errors["reason"][0].startswith("the forecast overflowed float32")
    assert_matches(got, forecaster.predict_frame(frame[~big]), ["a", "b"])


def test_fail_mode_stops_at_the_first_bad_series(model_dir, tmp_path):
    frame, _ = bad_frame()
    with pytest.raises(DataError) as err:
        run(model_dir, write(frame, tmp_path / "in.csv"), tmp_path / "out.parquet",
            on_bad_series="fail")
    assert err.value.exit_code == 3
    assert "--on-bad-series is 'fail'" in str(err.value)
    assert "series 's" in str(err.value)
    no_output(tmp_path, "out.parquet")


def test_every_series_bad_is_a_data_error(model_dir, tmp_path):
    frame = long_frame([5, 6, 7])
    with pytest.raises(DataError, match=r"all 3 series are bad, e.g. 's0': 5 steps of history"):
        run(model_dir, write(frame, tmp_path / "in.csv"), tmp_path / "out.parquet")
    no_output(tmp_path, "out.parquet")
    assert len(pd.read_csv(tmp_path / "out.errors.csv")) == 3


def test_an_output_or_errors_file_that_is_a_folder_is_refused_before_any_work(model_dir,
                                                                              tmp_path):
    inp = write(long_frame([30]), tmp_path / "in.csv")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(ConfigError, match=r"--output .*dir.parquet' is a folder"):
        run(model_dir, inp, tmp_path / "dir.parquet")  # IsADirectoryError after forecasting
    (tmp_path / "o5.errors.csv").mkdir()
    with pytest.raises(ConfigError, match=r"--output's errors file .*o5.errors.csv' is a folder"):
        run(model_dir, inp, tmp_path / "o5.csv")  # o5.csv was written, then a traceback
    assert not (tmp_path / "o5.csv").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_an_input_folder_is_named_as_one(model_dir, tmp_path):
    with pytest.raises(DataError, match=r"input file .* is a folder, not a file; check --input"):
        run(model_dir, tmp_path, tmp_path / "out.csv")  # it said "not found"


def test_unknown_output_suffix_is_a_config_error(tmp_path):
    # Checked before the model is loaded: the model path need not exist.
    with pytest.raises(ConfigError, match=r"--output '.*out.xlsx': use a .parquet \(or .pq\) "
                       r"or .csv file name"):
        batch_forecast(BatchOptions("no-model", tmp_path / "in.csv", tmp_path / "out.xlsx"))


def test_options_horizon_and_column_names(model_dir, forecaster, tmp_path):
    frame = long_frame([30, 40])
    expected = forecaster.predict_frame(frame, horizon=3)
    renamed = frame.rename(columns={"series_id": "store", "date": "time"})
    inp = write(renamed, tmp_path / "in.parquet")
    options = BatchOptions(str(model_dir), inp, tmp_path / "out.parquet", horizon=3,
                           timestamp_column="time", id_column="store")
    batch_forecast(options)
    got = read(tmp_path / "out.parquet")
    assert got["step"].max() == 3
    assert_matches(got, expected, ["a", "b"])
    with pytest.raises(ConfigError, match=r"--horizon 7: model model \(version local\) "
                       r"forecasts 1 to 6 steps"):
        batch_forecast(replace(options, horizon=7))
    with pytest.raises(DataError, match=r"no id column 'series_id': pass --id-column"):
        batch_forecast(replace(options, id_column="series_id"))


@pytest.mark.parametrize("id_column, timestamp_column, message", [
    ("a", None, r"--id-column 'a' is one of the model's channels \['a', 'b'\]; pass "
                r"--id-column naming another column"),
    ("series_id", "b", r"--timestamp-column 'b' is one of the model's channels"),
    ("date", None, r"--id-column and --timestamp-column both name 'date'; the series ids and "
                   r"the times need a column each"),
    ("nope", "nope", r"no timestamp column 'nope': pass --timestamp-column; no id column "
                     r"'nope': pass --id-column, or --layout wide for a file with one column per "
                     r"series \(columns"),  # not also "both name 'nope'"
])
def test_id_and_timestamp_columns_must_be_their_own(model_dir, tmp_path, id_column,
                                                     timestamp_column, message):
    inp = write(long_frame([30, 40]), tmp_path / "in.csv")
    with pytest.raises(DataError, match=message):
        batch_forecast(BatchOptions(str(model_dir), inp, tmp_path / "o.csv", id_column=id_column,
                                    timestamp_column=timestamp_column))
    no_output(tmp_path, "o.csv")


@pytest.mark.parametrize("layout", ["long", "wide"])
def test_a_csv_timestamp_column_of_numbers_is_not_read_as_1970(model_dir, mono_dir, tmp_path,
                                                               layout):
    # numbers read as nanoseconds after 1970 made every series one run of duplicate times
    frame = long_frame([30, 40]) if layout == "long" else make_frame(n=40, channels=["n", "s"])
    frame["date"] = np.arange(len(frame)) * 3600
    inp = write(frame, tmp_path / "in.csv")
    said = ("timestamp column 'date' row 1 has '0', which is not a timestamp (a number: does "
            "--timestamp-column name the time column?)")
    if layout == "long":
        with pytest.raises(DataError, match=r"all 2 series are bad, e.g. 's0': "
                           + re.escape(said)):
            batch_forecast(BatchOptions(str(model_dir), inp, tmp_path / "o.csv"))
    else:
        with pytest.raises(DataError, match=re.escape(f"in.csv: {said}; fix the value")):
            batch_forecast(BatchOptions(str(mono_dir), inp, tmp_path / "o.csv", layout="wide"))
    no_output(tmp_path, "o.csv")


@pytest.mark.parametrize("values, dtype", [
    (lambda n: np.arange(n) * 3600, "int64"),
    (lambda n: np.arange(n) % 2 == 1, "bool"),  # a TypeError traceback from tz_convert before
    (lambda n: pd.to_timedelta(np.arange(n), unit="h"), "timedelta64[us]"),
])
def test_a_parquet_timestamp_column_of_another_type_is_refused_whole(model_dir, tmp_path,
                                                                     values, dtype):
    frame = long_frame([30, 40])
    frame["date"] = values(len(frame))
    inp = write(frame, tmp_path / "in.parquet")
    with pytest.raises(DataError, match=re.escape(
            f"in.parquet: timestamp column 'date' is of type {dtype}, which holds no times; pass "
            "--timestamp-column naming the time column, or write the times as ISO 8601")):
        batch_forecast(BatchOptions(str(model_dir), inp, tmp_path / "o.csv", read_rows=30))
    no_output(tmp_path, "o.csv")


@pytest.mark.parametrize("read_rows", [30, 100_000])
@pytest.mark.parametrize("bad", ["", "1704117", "[1, 2]"])
def test_bad_times_in_one_series_skip_it_however_the_file_is_read(model_dir, tmp_path,
                                                                  read_rows, bad):
    # with 30 rows a read, rows 61-70 are one chunk: read as numbers, empty values and epoch
    # numbers were refused for the whole file, while 100000 rows a read skipped one series
    frame = long_frame([30, 30, 40])
    frame["date"] = frame["date"].astype(str)
    frame.loc[60:69, "date"] = bad
    summary, got = run(model_dir, write(frame, tmp_path / "in.csv"), tmp_path / "o.csv",
                       read_rows=read_rows)
    assert summary.series_skipped == 1 and got["series_id"].unique().tolist() == ["s0", "s1"]
    shown = {"": "an empty value", "1704117": "'1704117'", "[1, 2]": "'[1, 2]'"}[bad]
    hint = " (a number: does --timestamp-column name the time column?)" if bad == "1704117" \
        else ""
    assert pd.read_csv(tmp_path / "o.errors.csv").to_dict("records") == [{
        "series_id": "s2", "reason": f"timestamp column 'date' row 61 has {shown}, which is not "
                                     f"a timestamp{hint}"}]


def test_a_parquet_timestamp_that_is_a_list_is_named_not_a_traceback(model_dir, tmp_path):
    frame = long_frame([30, 40])
    frame["date"] = [[1, 2]] * len(frame)
    with pytest.raises(DataError, match=r"e.g. 's0': timestamp column 'date' row 1 has "
                       r"array\(\[1, 2\]\), which is not a timestamp"):
        batch_forecast(BatchOptions(str(model_dir), write(frame, tmp_path / "in.parquet"),
                                    tmp_path / "o.csv"))


def test_model_source_parse():
    assert ModelSource.parse("models:/m@champion") == ModelSource("models:/m@champion", "m",
                                                                  alias="champion")
    assert ModelSource.parse("models:/m/3") == ModelSource("models:/m/3", "m", version="3")
    local = ModelSource.parse("outputs/demo/model/")
    assert (local.name, local.version, local.is_local) == ("model", "local", True)
    for bad in ("models:/m", "models:/@champion", "models:/m@", "models:/m/abc", "models:/m/²"):
        with pytest.raises(ConfigError, match=r"use models:/NAME@ALIAS, models:/NAME/VERSION"):
            ModelSource.parse(bad)


def test_registered_champion_fills_model_name_and_version(registry, tmp_path):
    frame = long_frame([60, 80, 70])  # lookback 48 for this model
    expected = load_version_forecaster(registry, NAME, "1").predict_frame(frame)
    inp = write(frame, tmp_path / "in.csv")
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        summary, got = run(uri, inp, tmp_path / "out.parquet", tracking_uri=registry)
        assert (summary.model_name, summary.model_version) == (NAME, "1")
        assert set(got["model_name"]) == {NAME} and set(got["model_version"]) == {"1"}
        assert got["step"].max() == 12
        assert_matches(got, expected, ["a", "b"])
    for missing in (f"models:/{NAME}@nobody", f"models:/{NAME}/99", "models:/nobody@champion"):
        with pytest.raises(ForecastError, match=rf"{missing} cannot be resolved") as err:
            run(missing, inp, tmp_path / "x.parquet", tracking_uri=registry)
        # exit 1 as in `models list`, not 5: the store answered, the name was not there
        assert not isinstance(err.value, TrackingError) and err.value.exit_code == 1


def test_tracking_uri_alone_names_the_store(registry, tmp_path):
    # MLflow resolves "models:/" URIs in its process-wide registry: point that elsewhere, as in
    # a fresh process whose only hint is --tracking-uri, and the version must still load.
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    mlflow.set_registry_uri(other)
    try:
        frame = long_frame([60])
        summary, got = run(f"models:/{NAME}@champion", write(frame, tmp_path / "in.csv"),
                           tmp_path / "out.parquet", tracking_uri=registry)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert (summary.model_name, summary.model_version) == (NAME, "1")
    assert len(got) == 12


def test_cli_prints_a_summary_and_exits_0(model_dir, tmp_path, capsys):
    inp = write(long_frame(), tmp_path / "in.csv")
    code = main(["pipeline", "batch-forecast", "--model", str(model_dir), "--input", str(inp),
                 "--output", str(tmp_path / "out.parquet"), "--chunk-size", "3"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("forecast 7 series with model (version local), none skipped: "
                               "42 rows in ")
    summary = json.loads(lines[-1])
    assert {k: summary[k] for k in ("series_forecast", "series_skipped", "rows")} == \
        {"series_forecast": 7, "series_skipped": 0, "rows": 42}
    assert {"seconds", "series_per_second", "peak_rss_mb"} <= summary.keys()


def test_cli_exit_codes(model_dir, tmp_path, capsys):
    frame, _ = bad_frame()
    inp = write(frame, tmp_path / "in.csv")
    base = ["pipeline", "batch-forecast", "--model", str(model_dir), "--input", str(inp)]
    assert main([*base, "--output", str(tmp_path / "o.parquet"),
                 "--on-bad-series", "fail"]) == 3
    assert main([*base, "--output", str(tmp_path / "o.txt")]) == 2
    assert main([*base, "--output", str(tmp_path / "o.parquet"), "--layout", "wide"]) == 3
    err = capsys.readouterr().err
    assert "--on-bad-series is 'fail'" in err and "use a .parquet" in err
    no_output(tmp_path, "o.parquet")
    # bands: not a number, out of range, empty, or beyond the calibration: exit 2, named
    for flag, value, says in (("--quantiles", "nan", "--quantiles: nan is not between"),
                              ("--levels", "150", "--levels: 150 is not between"),
                              ("--levels", "", "--levels: '' is not a number"),
                              ("--levels", "99.99", "--levels 99.99: ")):
        assert main([*base, "--output", str(tmp_path / "o.parquet"), flag, value]) == 2
        assert says in capsys.readouterr().err, (flag, value)
    no_output(tmp_path, "o.parquet")


def test_day_first_input_timestamps_are_read_as_training_reads_them():
    from pipelines.batch_input import _parse_stamps

    # one format per column: 10/01 must not become 1 October beside 13/01 as 13 January
    raw = pd.Series(["10/01/2024", "11/01/2024", "12/01/2024", "13/01/2024"], name="date")
    days = pd.date_range("2024-01-10", periods=4, freq="D")
    assert list(_parse_stamps(raw, "in.csv")) == list(days)
    # a chunk that reads both ways is read month-first, not refused
    one = pd.Series(["01/02/2024"], name="date")
    assert _parse_stamps(one, "in.csv")[0] == pd.Timestamp("2024-01-02")


def test_reading_parquet_holds_no_more_memory_as_the_file_goes_on(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.batch_input import Reader

    # row groups as a writer streaming series makes them, of values that do not compress
    groups, per = 20, 100_000
    schema = pa.schema([("series_id", pa.string()), ("date", pa.timestamp("us")),
                        ("a", pa.float64())])
    with pq.ParquetWriter(tmp_path / "big.parquet", schema) as writer:
        for g in range(groups):
            writer.write_table(pa.table({
                "series_id": np.repeat([f"s{g:02d}-{i:04d}" for i in range(per // 100)], 100),
                "date": np.datetime64("2024-01-01", "us") + np.arange(per) * np.timedelta64(
                    1, "h"),
                "a": np.random.default_rng(g).standard_normal(per)}, schema=schema))
    held = []
    for chunk in Reader(tmp_path / "big.parquet").chunks(["series_id", "date", "a"], 30_000,
                                                          text=[], verbatim=[]):
        del chunk
        held.append(pa.total_allocated_bytes())
    # pyarrow's default pre-buffering kept column chunks read so far: 4.5 MB more by the end
    assert len(held) == 67 and held[-1] - held[2] < 1_000_000, (held[2], held[-1])


BANDS = ["a-q-10", "a-q-90", "a-lo-80", "a-hi-80", "b-q-10", "b-q-90", "b-lo-80", "b-hi-80"]


@pytest.mark.parametrize("spoil", [False, True], ids=["clean", "with bad series"])
def test_quantile_and_interval_columns_equal_predict_frame(model_dir, forecaster, tmp_path,
                                                            spoil):
    frame, _ = bad_frame() if spoil else (long_frame(), {})
    summary, got = run(model_dir, write(frame, tmp_path / "in.csv"), tmp_path / "out.parquet",
                       quantiles=(0.1, 0.9), levels=(0.8,), chunk_size=3)
    assert list(got.columns) == OUTPUT_COLUMNS[:6] + BANDS + OUTPUT_COLUMNS[6:]
    good = long_frame([30] * 7 if spoil else LENGTHS)
    good = good[good["series_id"].isin(got["series_id"].unique())]
    want = forecaster.predict_frame(good, quantiles=[0.1, 0.9], levels=[0.8])
    assert len(got) == len(want) == summary.series_forecast * H
    np.testing.assert_allclose(got[BANDS].to_numpy(), want[BANDS].to_numpy(), rtol=1e-5,
                               atol=1e-5)
    for c in ("a", "b"):
        assert (got[f"{c}-lo-80"] <= got[c]).all() and (got[c] <= got[f"{c}-hi-80"]).all()


def test_an_interval_the_calibration_cannot_give_is_refused_before_any_forecast(model_dir,
                                                                                tmp_path):
    inp = write(long_frame(), tmp_path / "in.csv")
    with pytest.raises(ConfigError, match=r"--levels 99.99: .* outside"):
        run(model_dir, inp, tmp_path / "out.parquet", levels=(0.9999,))
    assert not (tmp_path / "out.parquet").exists()
