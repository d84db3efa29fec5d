"""Batch forecasting on Spark: the batch-forecast job for more series than one machine holds.

    forecast pipeline batch-forecast --engine spark --model models:/NAME@champion \\
        --input s3a://bucket/series/ --output s3a://bucket/forecasts.parquet

The driver resolves the model once (an alias moving mid-job changes nothing) and broadcasts
its bundle files (safetensors + JSON, a few hundred KB), so workers need no access to the
tracking server. Spark reads the Parquet input (long or wide layout, local path or any URI it
reads); rows are hashed by series id into groups of about `--read-rows` rows, and
`groupBy(group).applyInPandas` hands each group to a Python worker, which loads the model once
and keeps it (a module-level cache: Python workers are reused across tasks) and runs the local
engine's own reading checks and batched forecast on it. Forecasts are written as a Parquet
folder with the local engine's columns; bad series, with the same reasons (without file row
numbers, which Spark does not know), as a CSV folder `<output stem>.errors.csv` beside it.

Output rows are grouped by hash, not in input order: sort by series_id, step to compare.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from forecast.bundle import load_bundle, save_bundle
from forecast.data import has_utc_offset
from forecast.errors import ConfigError, DataError, ForecastError, first_line
from forecast.predictor import Forecaster, quantile_column_names
from forecast.registry import ResolvedModel
from pipelines.batch_forecast import (
    MODEL_NAME,
    MODEL_VERSION,
    ORIGIN,
    STEP,
    TIMESTAMP,
    BatchOptions,
    BatchSummary,
    check_options,
    forecast_stream,
    open_model,
    peak_rss_mb,
)
from pipelines.batch_input import SERIES_ID, LongTails, check_long_columns, wide_series

# PySpark 4.3 warns that pandas 3 is "not yet fully supported"; the one path used here
# (applyInPandas on numbers, strings and times) is checked value for value against the local
# engine in the tests. Module level, so that it holds in the Python workers too.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                        category=FutureWarning)

log = logging.getLogger(__name__)

GROUP = "_forecast_group"  # the hash bucket column
REASON = "_forecast_error"  # set on a bad series' one row, null on forecast rows
INSTALL = "pip install -c constraints.txt 'forecast[spark]'"


def errors_uri(output: str) -> str:
    """`<stem>.errors.csv` beside the output, for a path or a URI alike."""
    parent, _, name = output.rstrip("/").rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{parent}/{stem}.errors.csv" if parent else f"{stem}.errors.csv"


@dataclass(frozen=True)
class _Job:
    """What each worker needs, pickled into the task: no SparkSession, no model object."""

    digest: str  # the bundle's content hash: the worker cache key
    files: Any  # Broadcast[dict[str, bytes]]: the bundle's files
    loads: Any  # Accumulator[int]: model loads across workers
    worker_rss: Any  # Accumulator[float], max: the largest worker's peak RSS (MB)
    model_name: str
    model_version: str
    id_column: str
    ts_column: str
    source: str
    horizon: int
    options: BatchOptions  # chunk size, layout, quantiles and levels
    columns: tuple[str, ...]  # the output schema's columns, REASON last
    values: tuple[str, ...]  # the float columns among them: channels, quantiles, intervals


_CACHE: dict[str, Forecaster] = {}


def _worker_forecaster(job: _Job) -> Forecaster:
    """The model, loaded once per Python worker process and kept for its later tasks."""
    forecaster = _CACHE.get(job.digest)
    if forecaster is None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in job.files.value.items():
                Path(tmp, name).write_bytes(data)
            forecaster = Forecaster(load_bundle(tmp))
        _CACHE.clear()  # one model per worker: a long-lived worker must not hoard them
        _CACHE[job.digest] = forecaster
        job.loads.add(1)
    return forecaster


def forecast_group(frame: pd.DataFrame, job: _Job) -> pd.DataFrame:
    """One hash group of raw rows → its forecast rows and one row per bad series."""
    forecaster = _worker_forecaster(job)
    frame = frame.drop(columns=GROUP).sort_values(job.id_column, kind="stable")
    tails = LongTails(forecaster, job.id_column, job.ts_column, job.source, row_numbers=False)
    read = [tails.feed(frame), tails.finish()]
    parts, bad = [], []
    for out, more in forecast_stream(forecaster, read, job.options, job.horizon,
                                     job.model_name, job.model_version):
        if out is not None:
            parts.append(out)
        bad += more
    if bad:
        parts.append(pd.DataFrame({SERIES_ID: [sid for sid, _ in bad],
                                   REASON: [reason for _, reason in bad]}))
    job.worker_rss.add(peak_rss_mb())
    out = pd.concat(parts, ignore_index=True).reindex(columns=list(job.columns)) if parts \
        else pd.DataFrame({c: [] for c in job.columns})
    # PySpark 4.3 cannot take pandas 3's Arrow-backed text columns (a ChunkedArray where it
    # expects an Array); plain Python strings it can
    text = [SERIES_ID, MODEL_NAME, MODEL_VERSION, REASON]
    out[text] = out[text].astype(object)
    # a bad series' row leaves the other columns empty: keep their types (NaN is a float)
    for c in (ORIGIN, TIMESTAMP):
        out[c] = pd.to_datetime(out[c])
    return out.astype({STEP: "Int64", **dict.fromkeys(job.values, "float32")})


def _session(options: BatchOptions) -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"--engine spark needs PySpark: {INSTALL}") from None
    settings = []
    for item in options.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--spark-conf {item!r}: use KEY=VALUE, e.g. "
                              "spark.executor.memory=4g")
        settings.append((key.strip(), value))
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line per gateway call otherwise
    # local mode starts Python workers with this interpreter, where forecast is installed
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("forecast batch-forecast")
    if options.spark_master:
        builder = builder.master(options.spark_master)
    for key, value in settings:
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # py4j and the launcher raise many types; all mean "no Spark"
        raise ForecastError(f"Spark did not start: {first_line(err)[:300]}; it needs Java 17 "
                            "(apt-get install openjdk-17-jre-headless) and, for a cluster, a "
                            "reachable --spark-master") from None
    return spark


def _configure(spark: Any) -> None:
    """Times as the local engine writes them: naive ones as they are, and ones with a zone as
    UTC instants (a UTC session zone), stored as Parquet's UTC-adjusted microseconds, not
    INT96, which readers take as naive."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")


class _Max:
    """AccumulatorParam keeping the largest value (workers' peak RSS)."""

    def zero(self, value: float) -> float:
        return 0.0

    def addInPlace(self, a: float, b: float) -> float:  # noqa: N802 (PySpark's name)
        return max(a, b)


def _read(spark: Any, options: BatchOptions, model: ResolvedModel, ts_column: str
          ) -> tuple[Any, str, bool]:
    """The input as long rows (id, time, channels), its id column, and whether the output
    times are UTC instants."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    source, forecaster = str(options.input), model.forecaster
    if source.lower().endswith(".csv"):
        raise ConfigError(f"--input {source!r}: --engine spark reads Parquet; convert the file "
                          "(pandas: read_csv(...).to_parquet(...)) or use --engine local")
    try:
        df = spark.read.parquet(source)
    except AnalysisException as err:
        raise DataError(f"could not read --input {source!r} as Parquet: "
                        f"{first_line(err)[:300]}") from None
    id_column = options.id_column
    if options.layout == "wide":
        series = wide_series(df.columns, source, forecaster, ts_column, id_column)
        numeric = all(isinstance(df.schema[c].dataType, T.NumericType) for c in series)
        values = [F.col(f"`{c}`") if numeric else F.col(f"`{c}`").cast("string")
                  for c in series]
        df = df.select(F.col(f"`{ts_column}`"), *[v.alias(c) for v, c in zip(values, series,
                                                                              strict=True)])
        id_column = SERIES_ID
        df = df.unpivot([ts_column], series, id_column, forecaster.channels[0])
    else:
        check_long_columns(df.columns, source, forecaster, ts_column, id_column)
    kind = df.schema[ts_column].dataType
    if isinstance(kind, T.DateType):
        df = df.withColumn(ts_column, F.col(f"`{ts_column}`").cast("timestamp_ntz"))
    elif not isinstance(kind, T.TimestampType | T.TimestampNTZType | T.StringType):
        raise DataError(f"{source}: timestamp column {ts_column!r} is of type "
                        f"{kind.simpleString()}, which holds no times; pass --timestamp-column "
                        "naming the time column, or write the times as ISO 8601 "
                        "(2024-01-31 13:00)")
    if df.where(F.col(f"`{id_column}`").isNull()).limit(1).count():
        raise DataError(f"{source}: column {id_column!r} is empty in some rows; every row "
                        "needs a series id (fill it or drop the row)")
    utc = isinstance(kind, T.TimestampType)
    if isinstance(kind, T.StringType):  # offsets decide, from the first rows as locally
        first = df.select(ts_column).limit(1000).toPandas()[ts_column]
        utc = has_utc_offset(first)
    columns = list(dict.fromkeys([id_column, ts_column, *forecaster.channels]))
    return df.select(*[F.col(f"`{c}`") for c in columns]), id_column, utc


def _schema(forecaster: Forecaster, options: BatchOptions, utc: bool) -> Any:
    from pyspark.sql import types as T

    time = T.TimestampType() if utc else T.TimestampNTZType()
    bands = quantile_column_names(forecaster.channels, options.quantiles, options.levels)
    return T.StructType([
        T.StructField(SERIES_ID, T.StringType()),
        T.StructField(ORIGIN, time),
        T.StructField(STEP, T.LongType()),
        T.StructField(TIMESTAMP, time),
        *[T.StructField(c, T.FloatType()) for c in [*forecaster.channels, *bands]],
        T.StructField(MODEL_NAME, T.StringType()),
        T.StructField(MODEL_VERSION, T.StringType()),
        T.StructField(REASON, T.StringType()),
    ])


def _bundle_files(forecaster: Forecaster) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_bundle(Path(tmp) / "model", forecaster.bundle)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _delete(spark: Any, uri: str) -> None:
    """Remove a stale errors folder, through Hadoop's file system (any URI Spark writes)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)


def spark_batch_forecast(options: BatchOptions, spark: Any | None = None) -> BatchSummary:
    """Forecast every series of `options.input` on Spark into the folder `options.output`
    (see the module doc). `spark`: a session to use (tests, notebooks); else one is built."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    check_options(options)
    output = str(options.output).rstrip("/")
    if output.lower().endswith(".csv"):
        raise ConfigError(f"--output {output!r}: --engine spark writes Parquet; name a .parquet "
                          "folder")
    model, horizon, ts_column = open_model(options)
    forecaster = model.forecaster
    spark = spark or _session(options)
    _configure(spark)
    df, id_column, utc = _read(spark, options, model, ts_column)
    rows = df.count()
    if rows == 0:
        raise DataError(f"{options.input}: no rows to forecast")
    sc = spark.sparkContext
    groups = max(sc.defaultParallelism, math.ceil(rows / options.read_rows))
    files = _bundle_files(forecaster)
    schema = _schema(forecaster, options, utc)
    job = _Job(
        digest=hashlib.sha256(b"".join(files.values())).hexdigest(),
        files=sc.broadcast(files), loads=sc.accumulator(0),
        worker_rss=sc.accumulator(0.0, _Max()),
        model_name=model.name, model_version=model.version,
        id_column=id_column, ts_column=ts_column, source=str(options.input),
        horizon=horizon, options=options, columns=tuple(schema.fieldNames()),
        values=(*forecaster.channels, *quantile_column_names(
            forecaster.channels, options.quantiles, options.levels)))
    log.info("model %s (version %s): lookback %d, horizon %d, channels %s; %d rows from %s "
             "(%s layout) in %d groups on %s", model.name, model.version, forecaster.lookback,
             horizon, forecaster.channels, rows, options.input, options.layout, groups,
             sc.master)
    # one partition per group: the groupBy then needs no second shuffle into Spark's default
    # 200 partitions, most of them empty
    result = (df.withColumn(GROUP, F.pmod(F.xxhash64(F.col(f"`{id_column}`")), F.lit(groups)))
              .repartition(groups, GROUP)
              .groupBy(GROUP)
              .applyInPandas(lambda frame: forecast_group(frame, job), schema)
              .persist())
    try:
        bad = result.where(F.col(REASON).isNotNull()).select(SERIES_ID, REASON)
        n_bad = bad.count()  # runs the forecast; the cache keeps it for the writes below
        errors = errors_uri(output)
        if n_bad and options.on_bad_series == "fail":
            sid, reason = bad.first()
            raise DataError(f"series {sid!r}: {reason}; --on-bad-series is 'fail': fix it, or "
                            "pass --on-bad-series skip to forecast the others and list the bad "
                            f"ones in {errors}")
        forecasts = result.where(F.col(REASON).isNull()).drop(REASON)
        n_rows = forecasts.count()
        if n_rows == 0:
            if n_bad:
                bad.withColumnRenamed(REASON, "reason").coalesce(1).write.mode("overwrite") \
                    .option("header", True).csv(errors)
                sid, reason = bad.first()
                raise DataError(f"all {n_bad} series are bad, e.g. {sid!r}: {reason}; see "
                                f"{errors}")
            raise DataError(f"{options.input}: no rows to forecast")
        forecasts.write.mode("overwrite").parquet(output)
        if n_bad:
            bad.withColumnRenamed(REASON, "reason").coalesce(1).write.mode("overwrite") \
                .option("header", True).csv(errors)
            log.warning("%d series skipped (bad data), listed with reasons in %s", n_bad,
                        errors)
        else:
            _delete(spark, errors)  # from an earlier run; it would describe another output
    finally:
        result.unpersist()
    seconds = time.perf_counter() - started
    done = n_rows // horizon
    summary = BatchSummary(
        output=output, errors_file=errors if n_bad else None, model_name=model.name,
        model_version=model.version, series_forecast=done, series_skipped=n_bad, rows=n_rows,
        seconds=round(seconds, 3), series_per_second=round(done / seconds, 1),
        peak_rss_mb=round(peak_rss_mb(), 1), engine="spark", model_loads=job.loads.value,
        workers_peak_rss_mb=round(job.worker_rss.value, 1))
    log.info("done: %d series forecast, %d skipped, %d rows in %.1fs (%.0f series/s; model "
             "loaded %d times; peak RSS driver %.0f MB, largest worker %.0f MB)", done, n_bad,
             n_rows, seconds, summary.series_per_second, summary.model_loads,
             summary.peak_rss_mb, summary.workers_peak_rss_mb or 0)
    return summary

