"""Batch forecasting: many series from one file → one forecast file, in bounded memory.

    forecast pipeline batch-forecast --model models:/NAME@champion \\
        --input series.parquet --output forecasts.parquet

The data's path: read the input in chunks (CSV chunks, Parquet row batches) → keep each
series' last `lookback` rows by time (the model sees no more; a series that straddles a read
chunk is carried over) → forecast `--chunk-size` series in one batch → append them to a temp
file beside the output → rename it into place at the end, so a failed or killed job never
leaves a half-written output.

Input layouts:
    long  one row per series and time step: the id column, the timestamp column, one column
          per model channel. A series' rows must be contiguous (the file grouped or sorted by
          id); within a series any time order.
    wide  the timestamp column plus one column per series; single-channel models only.

Output columns: series_id, forecast_origin (the series' last observed timestamp), step (1..h),
timestamp (forecast time), one column per channel, with `--quantiles` / `--levels` the
quantile and interval columns (`<channel>-q-10`, `<channel>-lo-80`, `<channel>-hi-80`), then
model_name, model_version.

Bad series (too short; a missing value, gap or duplicate timestamp in the last `lookback`
rows; an unparsable timestamp or value anywhere) are skipped and listed with the reason in
`<output stem>.errors.csv`, or stop the job with `--on-bad-series fail`.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecast.data import (
    SUFFIXES,
    has_utc_offset,
)
from forecast.errors import ConfigError, DataError, ForecastError
from forecast.intervals import interval_quantiles
from forecast.paths import writable_file
from forecast.predictor import Forecaster, quantile_columns
from forecast.registry import ModelSource, ResolvedModel, load_model
from forecast.tracking import PREFLIGHT_SECONDS, default_uri, preflight
from pipelines.batch_input import (
    SERIES_ID,
    Batch,
    Reader,
    bad_series_reason,
    block_starts,
    long_batches,
    rebatch,
    wide_batches,
)

log = logging.getLogger(__name__)

ORIGIN, STEP, TIMESTAMP = "forecast_origin", "step", "timestamp"
MODEL_NAME, MODEL_VERSION = "model_name", "model_version"
OUTPUT_COLUMNS = (SERIES_ID, ORIGIN, STEP, TIMESTAMP, MODEL_NAME, MODEL_VERSION)



@dataclass(frozen=True)
class BatchOptions:
    """One batch job; the CLI flags map one to one (see `add_arguments`)."""

    model: str  # models:/NAME@ALIAS, models:/NAME/VERSION or a bundle directory
    input: str | Path  # the spark engine also reads any URI Spark reads (s3a://, hdfs://)
    output: str | Path  # .parquet/.pq or .csv; the spark engine writes a Parquet folder
    layout: Literal["long", "wide"] = "long"
    chunk_size: int = 2000  # series per forward pass
    horizon: int | None = None  # None: the model's horizon
    tracking_uri: str | None = None
    timestamp_column: str | None = None  # None: the model's meta.timestamp_column
    id_column: str = "series_id"
    on_bad_series: Literal["skip", "fail"] = "skip"
    read_rows: int = 200_000  # rows per read chunk: bounds memory, does not change results
    quantiles: tuple[float, ...] = ()  # quantile levels in (0, 1): a column per channel each
    levels: tuple[float, ...] = ()  # central interval coverages (0.8): lo and hi columns each
    engine: Literal["local", "spark"] = "local"
    spark_master: str | None = None  # None: the session's own (local[*] when none is set)
    spark_conf: tuple[str, ...] = ()  # KEY=VALUE Spark settings


@dataclass(frozen=True)
class BatchSummary:
    output: str
    errors_file: str | None
    model_name: str
    model_version: str
    series_forecast: int
    series_skipped: int
    rows: int
    seconds: float
    series_per_second: float
    peak_rss_mb: float  # this process's; on Spark the driver's, workers' below
    engine: str = "local"
    model_loads: int = 1  # on Spark: loads across all Python workers (one each, cached)
    workers_peak_rss_mb: float | None = None  # on Spark: the largest Python worker's



def _forecast(forecaster: Forecaster, tails: pd.DataFrame, horizon: int, model_name: str,
              model_version: str, wide: bool, quantiles: Sequence[float] = (),
              levels: Sequence[float] = ()) -> tuple[pd.DataFrame | None,
                                                   list[tuple[str, str]]]:
    """Forecast a batch in one forward pass. If a series in it is bad, validate them one by
    one (no forward pass) and forecast the good ones together: the fast path stays batched.
    With `quantiles` or `levels`, their columns follow the channels'."""
    channel = forecaster.channels[0] if wide else None
    wanted = sorted(set(quantiles) | set(interval_quantiles(levels)))
    bad: list[tuple[str, str]] = []
    bands = None
    try:
        # clean tails (the usual case) are checked in whole-array steps; the rest the slow way
        regular = forecaster.regular_histories(tails)
        if regular is None:
            ids, values, stamps = forecaster.histories(tails)
            assert stamps is not None  # tails always carry timestamps
            last = pd.DatetimeIndex([s[-1] for s in stamps])
        else:
            ids, values, last = regular
        if wanted:
            forecast, bands = forecaster.predict_quantiles(values, wanted, horizon, ids)
        else:
            forecast = forecaster.predict_arrays(values, horizon, ids)
    except DataError:
        ids, values, lasts = [], [], []
        sid_column = tails[SERIES_ID].to_numpy()
        starts = block_starts(sid_column)
        for lo, hi in zip(starts, np.r_[starts[1:], len(tails)], strict=True):
            sid = str(sid_column[lo])
            try:
                one_ids, one_values, one_stamps = forecaster.histories(tails.iloc[lo:hi])
                forecaster.check_history(one_values[0], f"series {sid!r}")
            except DataError as err:
                bad.append((sid, bad_series_reason(err, sid, channel)))
                continue
            assert one_stamps is not None
            ids += one_ids
            values += one_values
            lasts.append(one_stamps[0][-1])
        # a valid history can still overflow inside the model: that series is bad, not the job
        forecast = forecaster.unchecked_forecast(values, horizon, ids) if ids else np.empty(0)
        broken = [i for i in range(len(ids)) if not np.isfinite(forecast[i]).all()]
        for i in broken:
            overflow = DataError(forecaster.overflow(values, ids, i))
            bad.append((ids[i], bad_series_reason(overflow, ids[i], channel)))
        keep = [i for i in range(len(ids)) if i not in set(broken)]
        if not keep:
            return None, bad
        forecast = forecast[keep]
        ids, last = [ids[i] for i in keep], pd.DatetimeIndex([lasts[i] for i in keep])
        if wanted:  # a second pass over the good ones, on this rare path only
            forecast, bands = forecaster.predict_quantiles([values[i] for i in keep], wanted,
                                                           horizon, ids)
    out = forecaster.to_frame(forecast, ids, last)
    if bands is not None:
        out = out.join(pd.DataFrame(quantile_columns(bands, forecaster.channels, wanted,
                                                     quantiles, levels)))
    out.insert(1, ORIGIN, last.repeat(horizon))
    out = out.rename(columns={forecaster.meta.timestamp_column: TIMESTAMP})
    out[MODEL_NAME] = model_name
    out[MODEL_VERSION] = model_version
    return out, bad


def forecast_stream(forecaster: Forecaster, read: Iterable[Batch], options: BatchOptions,
                    horizon: int, model_name: str, model_version: str
                    ) -> Iterator[tuple[pd.DataFrame | None, list[tuple[str, str]]]]:
    """Read batches → (forecast frame or None, bad series) per `options.chunk_size` series."""
    for batch in rebatch(read, options.chunk_size):
        bad = list(batch.bad)
        frame = None
        if batch.tails is not None:
            frame, more = _forecast(forecaster, batch.tails, horizon, model_name,
                                    model_version, options.layout == "wide", options.quantiles,
                                    options.levels)
            bad += more
        yield frame, bad


class _AtomicWriter:
    """Appends chunks to a hidden temp file beside the output; `commit` renames it into place
    (atomic on one file system), `discard` removes it."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._csv: IO[str] | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(str(self.tmp), table.schema)
            else:
                table = table.cast(self._parquet.schema)  # one schema for the file
            self._parquet.write_table(table)
        else:
            first = self._csv is None
            if self._csv is None:
                self._csv = self.tmp.open("w", newline="")
            frame.to_csv(self._csv, header=first, index=False)
        self.rows += len(frame)

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()
        self._parquet = self._csv = None

    def commit(self) -> None:
        self._close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _write_errors(path: Path, bad: list[tuple[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pd.DataFrame(bad, columns=[SERIES_ID, "reason"]).to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_options(options: BatchOptions) -> None:
    """Option checks that need no model, for both engines."""
    if options.layout not in ("long", "wide"):
        raise ConfigError(f"--layout {options.layout!r}: use 'long' or 'wide'")
    if options.on_bad_series not in ("skip", "fail"):
        raise ConfigError(f"--on-bad-series {options.on_bad_series!r}: use 'skip' or 'fail'")
    for name in ("chunk_size", "read_rows"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be "
                              "at least 1")
    if str(options.output).rstrip("/") == str(options.input).rstrip("/") or (
            Path(options.output).resolve() == Path(options.input).resolve()):
        raise ConfigError(f"--output {str(options.output)!r} is the input; write elsewhere")


def _check(options: BatchOptions) -> str:
    """The local engine's option checks; returns the output kind."""
    if options.spark_master or options.spark_conf:
        raise ConfigError("--spark-master and --spark-conf are for --engine spark; drop them "
                          "or add --engine spark")
    check_options(options)
    out = Path(options.output)
    kind = SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise ConfigError(f"--output {str(out)!r}: use a .parquet (or .pq) or .csv file name")
    return kind


def open_model(options: BatchOptions) -> tuple[ResolvedModel, int, str]:
    """The model, the horizon to forecast and the input's timestamp column, checked."""
    source = ModelSource.parse(options.model)
    uri = default_uri(options.tracking_uri)
    if not source.is_local:  # an unreachable server would be retried for minutes
        preflight(uri, PREFLIGHT_SECONDS, create=False)
    model = load_model(source, uri)
    forecaster = model.forecaster
    clash = set(OUTPUT_COLUMNS) & set(forecaster.channels)
    if clash:
        raise ForecastError(f"model channel(s) {sorted(clash)} clash with output columns "
                            f"{list(OUTPUT_COLUMNS)}; rename the channels and retrain")
    forecaster.check_bands(options.quantiles, options.levels)
    horizon = forecaster.horizon if options.horizon is None else options.horizon
    if not 1 <= horizon <= forecaster.horizon:
        raise ConfigError(f"--horizon {horizon}: model {model.name} (version {model.version}) "
                          f"forecasts 1 to {forecaster.horizon} steps; pass one of those")
    return model, horizon, options.timestamp_column or forecaster.meta.timestamp_column


def peak_rss_mb() -> float:
    # ru_maxrss is in KB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def batch_forecast(options: BatchOptions) -> BatchSummary:
    """Forecast every series of `options.input` into `options.output` (see the module doc)."""
    started = time.perf_counter()
    out_kind = _check(options)
    output = Path(options.output)
    writable_file(output, "--output")  # before the model and data are read
    errors_path = output.with_name(f"{output.stem}.errors.csv")
    writable_file(errors_path, "--output's errors file")
    reader = Reader(Path(options.input))
    model, horizon, ts_column = open_model(options)
    forecaster = model.forecaster
    log.info("model %s (version %s): lookback %d, horizon %d, channels %s; reading %s (%s layout)",
             model.name, model.version, forecaster.lookback, horizon, forecaster.channels,
             reader.path, options.layout)
    read = (long_batches(reader, forecaster, ts_column, options.id_column, options.read_rows)
            if options.layout == "long" else
            wide_batches(reader, forecaster, ts_column, options.id_column, options.read_rows,
                         options.chunk_size))
    # timestamps with offsets are read in UTC; the output then says UTC, or it reads as local
    # time. The file's first rows decide, so that every chunk has one column type.
    first = next(reader.chunks([ts_column], 1000, text=[ts_column], verbatim=[]), None) \
        if ts_column in reader.columns else None
    utc = first is not None and has_utc_offset(first[ts_column])

    writer = _AtomicWriter(output, out_kind)
    skipped: list[tuple[str, str]] = []
    done = chunks = 0
    try:
        for frame, bad in forecast_stream(forecaster, read, options, horizon, model.name,
                                          model.version):
            if frame is not None:
                if utc:
                    frame[[ORIGIN, TIMESTAMP]] = frame[[ORIGIN, TIMESTAMP]].apply(
                        lambda c: c.dt.tz_localize("UTC"))
                writer.write(frame)
                done += len(frame) // horizon
            if bad and options.on_bad_series == "fail":
                sid, reason = bad[0]
                raise DataError(f"series {sid!r}: {reason}; --on-bad-series is 'fail': fix it, "
                                "or pass --on-bad-series skip to forecast the others and list "
                                f"the bad ones in {errors_path}")
            skipped += bad
            if frame is not None:
                chunks += 1
                log.info("chunk %d: %d series done (%d skipped), %d rows written, %.0f series/s",
                         chunks, done, len(skipped), writer.rows,
                         done / (time.perf_counter() - started))
        if done == 0:
            if skipped:
                _write_errors(errors_path, skipped)
                raise DataError(f"all {len(skipped)} series are bad, e.g. {skipped[0][0]!r}: "
                                f"{skipped[0][1]}; see {errors_path}")
            raise DataError(f"{reader.path}: no rows to forecast")
        writer.commit()
    except BaseException:
        writer.discard()
        raise

    if skipped:
        _write_errors(errors_path, skipped)
        log.warning("%d series skipped (bad data), listed with reasons in %s", len(skipped),
                    errors_path)
    elif errors_path.exists():
        errors_path.unlink()  # from an earlier run; it would describe another output
    seconds = time.perf_counter() - started
    summary = BatchSummary(
        output=str(output), errors_file=str(errors_path) if skipped else None,
        model_name=model.name, model_version=model.version, series_forecast=done,
        series_skipped=len(skipped), rows=writer.rows, seconds=round(seconds, 3),
        series_per_second=round(done / seconds, 1), peak_rss_mb=round(peak_rss_mb(), 1))
    log.info("done: %d series forecast, %d skipped, %d rows in %.1fs (%.0f series/s, "
             "peak RSS %.0f MB)", summary.series_forecast, summary.series_skipped, summary.rows,
             summary.seconds, summary.series_per_second, summary.peak_rss_mb)
    return summary

