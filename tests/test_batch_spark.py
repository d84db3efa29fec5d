"""The batch-forecast job on a real Spark (local[2] on 127.0.0.1, UI off): forecasts and bad
series equal the local engine's, value for value, on the same files."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from forecast.errors import ConfigError, DataError
from pipelines.batch_forecast import BatchOptions, BatchSummary, batch_forecast
from pipelines.batch_spark import errors_uri, spark_batch_forecast
from tests.batch_files import bad_frame, long_frame, write
from tests.conftest import make_frame
from tests.tracked import NAME

pytestmark = pytest.mark.slow

LOCAL_SPARK = {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    os.environ.update(LOCAL_SPARK)
    # py4j logs at interpreter exit, after pytest has closed the streams it captured
    logging.getLogger("py4j").setLevel(logging.WARNING)
    session = (SparkSession.builder.master("local[2]").appName("forecast-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .getOrCreate())
    yield session
    session.stop()


def both(model: Path | str, inp: Path, tmp: Path, spark: SparkSession, **kw
         ) -> tuple[BatchSummary, pd.DataFrame, BatchSummary, pd.DataFrame]:
    """The local engine's summary and forecasts, then Spark's, rows sorted alike."""
    local = batch_forecast(BatchOptions(model=str(model), input=inp,
                                        output=tmp / "local.parquet", **kw))
    remote = spark_batch_forecast(BatchOptions(model=str(model), input=str(inp),
                                               output=str(tmp / "spark.parquet"), **kw), spark)

    def rows(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path).sort_values(["series_id", "step"]).reset_index(drop=True)

    return local, rows(tmp / "local.parquet"), remote, rows(tmp / "spark.parquet")


def as_text(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Columns as Parquet strings (None where missing): text and times that fail to parse
    reach both engines as they are."""
    frame = frame.copy()
    for c in columns:
        frame[c] = pd.Series([None if pd.isna(v) else str(v) for v in frame[c]], dtype=object)
    return frame


def test_forecasts_and_bad_series_equal_the_local_engine(spark, model_dir, tmp_path):
    frame, reasons = bad_frame()
    inp = write(as_text(frame, ["a", "b", "date"]), tmp_path / "in.parquet")
    # 60 rows a group: 4 groups over 2 cores, so a model load per group would show
    local, want, remote, got = both(model_dir, inp, tmp_path, spark, chunk_size=3, read_rows=60,
                                    quantiles=(0.1, 0.5), levels=(0.8, 0.9))
    assert "a-q-50" in got.columns and "b-hi-90" in got.columns
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert sorted(got["series_id"].unique()) == ["s0", "s6"]
    assert (remote.series_forecast, remote.series_skipped, remote.rows) == \
        (local.series_forecast, local.series_skipped, local.rows) == (2, 5, 2 * 6)
    assert remote.engine == "spark" and remote.workers_peak_rss_mb > 0
    assert 1 <= remote.model_loads <= 2  # once per Python worker, not per group or series
    local_errors = pd.read_csv(tmp_path / "local.errors.csv", dtype=str)
    spark_errors = pd.read_csv(next(Path(errors_uri(str(tmp_path / "spark.parquet")))
                                    .glob("part-*.csv")), dtype=str)
    assert remote.errors_file == str(tmp_path / "spark.errors.csv")
    # the same reasons, less the file's row numbers, which Spark does not know
    want_reasons = {s: re.sub(r" row \d+", "", r) for s, r in
                    zip(local_errors["series_id"], local_errors["reason"], strict=True)}
    assert dict(zip(spark_errors["series_id"], spark_errors["reason"], strict=True)) == \
        want_reasons
    assert set(want_reasons) == set(reasons)


def test_wide_layout_equals_the_local_engine(spark, mono_dir, tmp_path):
    wide = make_frame(n=40, channels=["north", "south", "east", "west", "up"], seed=3)
    wide.loc[35, "east"] = np.nan  # a bad series among good ones
    inp = write(wide, tmp_path / "wide.parquet")
    local, want, remote, got = both(mono_dir, inp, tmp_path, spark, layout="wide")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert remote.series_skipped == local.series_skipped == 1


def test_times_with_a_zone_are_forecast_in_utc_as_locally(spark, model_dir, tmp_path):
    frame = long_frame([30, 40])
    frame["date"] = frame["date"].dt.tz_localize("Asia/Tokyo")
    _, want, _, got = both(model_dir, write(frame, tmp_path / "in.parquet"), tmp_path, spark)
    assert str(got["timestamp"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_a_registered_alias_from_the_command_line(spark, registry, tmp_path):
    # A forward pass's float32 sums can differ in the last bit with the number of series in
    # the batch (here up to 1e-6), and Spark's groups are not the local engine's chunks: one
    # series per pass on both sides makes the computations, and so the values, the same.
    frame = long_frame([60, 80, 70])
    inp = write(frame, tmp_path / "in.parquet")
    out = tmp_path / "forecasts.parquet"
    stale = Path(errors_uri(str(out)))
    stale.mkdir()  # an earlier run's list of bad series: a clean run removes it
    job = subprocess.run(
        [sys.executable, "-m", "forecast", "pipeline", "batch-forecast", "--engine", "spark",
         "--spark-master", "local[2]", "--spark-conf", "spark.ui.enabled=false",
         "--spark-conf", "spark.driver.bindAddress=127.0.0.1",
         "--model", f"models:/{NAME}@champion", "--tracking-uri", registry,
         "--input", str(inp), "--output", str(out), "--chunk-size", "1"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
             **LOCAL_SPARK}, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads(job.stdout.strip().splitlines()[-1])
    assert (summary["engine"], summary["model_name"], summary["model_version"]) == \
        ("spark", NAME, "1")
    assert summary["series_forecast"] == 3 and summary["model_loads"] >= 1
    assert not stale.exists()
    local = batch_forecast(BatchOptions(model=f"models:/{NAME}@champion", input=inp,
                                        output=tmp_path / "local.parquet",
                                        tracking_uri=registry, chunk_size=1))
    assert local.rows == summary["rows"] == 3 * 12
    got = pd.read_parquet(out).sort_values(["series_id", "step"]).reset_index(drop=True)
    want = pd.read_parquet(tmp_path / "local.parquet")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # with the default batches, the same to float32 rounding
    batched = spark_batch_forecast(BatchOptions(
        model=f"models:/{NAME}@champion", input=str(inp), output=str(tmp_path / "b.parquet"),
        tracking_uri=registry), spark)
    assert batched.model_version == "1"
    got = pd.read_parquet(tmp_path / "b.parquet").sort_values(["series_id", "step"])
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), want[["a", "b"]].to_numpy(),
                               rtol=1e-6, atol=0)


def test_fail_mode_stops_and_writes_nothing(spark, model_dir, tmp_path):
    frame, _ = bad_frame()
    inp = write(as_text(frame, ["a", "b", "date"]), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"series 's\d': .*--on-bad-series is 'fail'"):
        spark_batch_forecast(BatchOptions(model=str(model_dir), input=str(inp),
                                          output=str(out), on_bad_series="fail"), spark)
    assert not out.exists()


def test_every_series_bad_is_a_data_error_with_the_list(spark, model_dir, tmp_path):
    inp = write(long_frame([5, 6, 7]), tmp_path / "in.parquet")
    with pytest.raises(DataError, match=r"all 3 series are bad, e.g. 's\d': \d steps of"):
        spark_batch_forecast(BatchOptions(model=str(model_dir), input=str(inp),
                                          output=str(tmp_path / "out.parquet")), spark)
    assert not (tmp_path / "out.parquet").exists()
    assert len(pd.read_csv(next((tmp_path / "out.errors.csv").glob("part-*.csv")))) == 3


@pytest.mark.parametrize("change, error, match", [
    ({"output": "out.csv"}, ConfigError, r"--engine spark writes Parquet"),
    ({"input": "in.csv"}, ConfigError, r"--engine spark reads Parquet"),
    ({"input": "missing.parquet"}, DataError, r"could not read --input '.*missing.parquet'"),
    ({"timestamp_column": "n"}, DataError, r"timestamp column 'n' is of type bigint, which "
                                           r"holds no times"),
    ({"id_column": "nobody"}, DataError, r"no id column 'nobody': pass --id-column"),
    ({"layout": "wide"}, DataError, r"--layout wide holds one value per series"),
])
def test_bad_options_are_named(spark, model_dir, tmp_path, change, error, match):
    frame = long_frame([30]).assign(n=1)
    write(frame, tmp_path / "in.parquet")
    write(frame, tmp_path / "in.csv")
    options = {"input": "in.parquet", "output": "out.parquet", **change}
    options = {k: str(tmp_path / v) if k in ("input", "output") else v
               for k, v in options.items()}
    with pytest.raises(error, match=match):
        spark_batch_forecast(BatchOptions(model=str(model_dir), **options), spark)


def test_spark_settings_are_checked_before_spark_starts(model_dir, tmp_path):
    inp = write(long_frame([30]), tmp_path / "in.parquet")
    with pytest.raises(ConfigError, match=r"--spark-conf 'executor.memory': use KEY=VALUE"):
        spark_batch_forecast(BatchOptions(model=str(model_dir), input=str(inp),
                                          output=str(tmp_path / "o.parquet"),
                                          spark_conf=("executor.memory",)))
    with pytest.raises(ConfigError, match=r"--spark-master and --spark-conf are for --engine "
                                          r"spark"):
        batch_forecast(BatchOptions(model=str(model_dir), input=inp,
                                    output=tmp_path / "o.parquet", spark_master="local[2]"))


def test_errors_sit_beside_the_output_for_paths_and_uris():
    assert errors_uri("/data/out/forecasts.parquet") == "/data/out/forecasts.errors.csv"
    assert errors_uri("s3a://bucket/runs/forecasts/") == "s3a://bucket/runs/forecasts.errors.csv"
    assert errors_uri("forecasts") == "forecasts.errors.csv"
