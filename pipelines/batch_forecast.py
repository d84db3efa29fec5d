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
timestamp (forecast time), one column per channel, model_name, model_version.

Bad series (too short; a missing value, gap or duplicate timestamp in the last `lookback`
rows; an unparsable timestamp or value anywhere) are skipped and listed with the reason in
`<output stem>.errors.csv`, or stop the job with `--on-bad-series fail`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecast.data import (
    SUFFIXES,
    check_csv_header,
    has_utc_offset,
    shown_value,
    to_datetime_column,
)
from forecast.errors import ConfigError, DataError, ForecastError
from forecast.paths import writable_file
from forecast.predictor import Forecaster
from forecast.registry import ModelSource, load_model
from forecast.tracking import PREFLIGHT_SECONDS, default_uri, preflight

log = logging.getLogger("pipelines.batch_forecast")  # not __name__: that is __main__ under -m

SERIES_ID, ORIGIN, STEP, TIMESTAMP = "series_id", "forecast_origin", "step", "timestamp"
MODEL_NAME, MODEL_VERSION = "model_name", "model_version"
OUTPUT_COLUMNS = (SERIES_ID, ORIGIN, STEP, TIMESTAMP, MODEL_NAME, MODEL_VERSION)

# pandas' default missing-value markers, applied to value and timestamp columns only: an id
# such as "NA" (North America) must stay an id.
NA_TOKENS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass(frozen=True)
class BatchOptions:
    """One batch job; the CLI flags map one to one (see `add_arguments`)."""

    model: str  # models:/NAME@ALIAS, models:/NAME/VERSION or a bundle directory
    input: Path
    output: Path  # .parquet/.pq or .csv
    layout: Literal["long", "wide"] = "long"
    chunk_size: int = 2000  # series per forward pass
    horizon: int | None = None  # None: the model's horizon
    tracking_uri: str | None = None
    timestamp_column: str | None = None  # None: the model's meta.timestamp_column
    id_column: str = "series_id"
    on_bad_series: Literal["skip", "fail"] = "skip"
    read_rows: int = 200_000  # rows per read chunk: bounds memory, does not change results


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
    peak_rss_mb: float


@dataclass
class _Batch:
    """Complete series ready to forecast (last `lookback` rows each, contiguous, time-sorted)
    and series already found bad while reading, as (id, reason)."""

    tails: pd.DataFrame | None
    n_series: int
    bad: list[tuple[str, str]] = field(default_factory=list)


def _block_starts(ids: np.ndarray) -> np.ndarray:
    """Row positions where a new id starts, in a column whose series are contiguous."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])


def _last_rows(frame: pd.DataFrame, ts_col: str, lookback: int) -> pd.DataFrame:
    """Each series' last `lookback` rows by time, series in their order, rows time-sorted."""
    ids = frame[SERIES_ID].to_numpy()
    n = len(ids)
    starts = _block_starts(ids)
    sizes = np.diff(np.r_[starts, n])
    block = np.repeat(np.arange(len(starts)), sizes)
    stamps = frame[ts_col].to_numpy().view("i8")
    order = np.lexsort((stamps, block))  # by series, then time; stable for equal stamps
    # After the sort series k still occupies rows starts[k]..ends[k]; keep its last rows.
    from_end = (starts + sizes)[block[order]] - np.arange(n) - 1
    return frame.iloc[order[from_end < lookback]].reset_index(drop=True)


def _parse_stamps(raw: pd.Series, source: str) -> pd.Series:
    """Timestamps as naive datetimes (aware ones in UTC, as forecast.data reads them); NaT
    where a value is missing or unparsable. A column whose type holds no times (Parquet
    numbers, booleans, durations; a CSV's is always text) is refused whole: pandas would read
    numbers as nanoseconds after 1970, every series a run of duplicates."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return raw
    if (pd.api.types.is_bool_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype)
            or pd.api.types.is_timedelta64_dtype(raw.dtype)):
        raise DataError(f"{source}: timestamp column {raw.name!r} is of type {raw.dtype}, "
                        "which holds no times; pass --timestamp-column naming the time column, "
                        "or write the times as ISO 8601 (2024-01-31 13:00)")
    # as training reads them, except that a chunk of short histories may hold no day above
    # 12: such a chunk is read month-first, not refused
    parsed = to_datetime_column(raw, "the input", str(raw.name), refuse_ambiguous=False)
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None)


def _stamp_problem(raw: pd.Series, pos: int, row: int) -> str:
    shown = shown_value(raw, pos)
    hint = " (a number: does --timestamp-column name the time column?)" \
        if shown != "an empty value" and _is_number(raw.iloc[pos]) else ""
    return f"timestamp column {raw.name!r} row {row} has {shown}, which is not a timestamp{hint}"


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _numbers(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where missing) and a mask of unusable ones (text, infinite)."""
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isinf(num)
    if not pd.api.types.is_numeric_dtype(raw.dtype):
        bad |= np.isnan(num) & raw.notna().to_numpy()
    return num, bad


def _value_problem(raw: pd.Series, pos: int, column: str, row: int) -> str:
    value = raw.iloc[pos]
    if isinstance(value, float | np.floating):
        return f"column {column!r} row {row} is infinite"
    return f"column {column!r} row {row} has {value!r}, which is not a number"


def _reason(err: DataError, sid: str, channel: str | None) -> str:
    """The message without the id, which is the errors file's first column. `channel`: the
    model's channel, in the wide layout, where the file's column is the series itself."""
    msg = str(err)
    for prefix in (f"history: series {sid!r}: ", f"series {sid!r}: ", "history: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    return msg if channel is None else msg.replace(f"column {channel!r}", f"column {sid!r}")


class _Reader:
    """Streams a CSV or Parquet file in chunks of about `rows` rows, as data frames."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise DataError(f"input file {str(path)!r} {what}; check --input")
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"input file {str(path)!r} has suffix {path.suffix!r}; use .csv, "
                            ".parquet or .pq")
        self.path, self.kind = path, kind
        try:
            self.columns = [str(c) for c in (
                pd.read_csv(path, nrows=0).columns if kind == "csv"
                else pq.ParquetFile(path).schema_arrow.names)]
        except Exception as err:  # the readers raise many types; all mean "unreadable file"
            raise DataError(f"could not read {str(path)!r} as {kind}: {err}") from None
        if kind == "csv":
            check_csv_header(path)

    def chunks(self, columns: list[str], rows: int, text: list[str],
               verbatim: list[str]) -> Iterator[pd.DataFrame]:
        """`columns` only. In a CSV, `text` columns are read as strings, whatever a chunk
        holds (a chunk of a time column can look like numbers), and NA markers apply to all but
        the `verbatim` ones (ids: a series may be called "NA")."""
        try:
            if self.kind == "csv":
                with pd.read_csv(self.path, usecols=columns, chunksize=rows,
                                 dtype={c: str for c in text}, keep_default_na=False,
                                 na_values={c: NA_TOKENS for c in columns if c not in verbatim},
                                 ) as reader:
                    yield from reader
            else:
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=rows,
                                                                    columns=columns):
                    yield batch.to_pandas()
        except (ValueError, OSError, pa.ArrowException) as err:
            raise DataError(f"could not read {str(self.path)!r} as {self.kind}: {err}") from None


class _LongTails:
    """Read chunks of a long file → the last `lookback` rows of each series whose block ended.

    Only the series still open at a chunk's end is carried over, trimmed to `lookback` rows,
    so memory does not grow with the file."""

    def __init__(self, forecaster: Forecaster, id_column: str, ts_column: str,
                 source: str) -> None:
        self.lookback = forecaster.lookback
        self.channels = forecaster.channels
        self.ts_col = forecaster.meta.timestamp_column  # the name Forecaster.histories reads
        self.id_column, self.ts_column, self.source = id_column, ts_column, source
        self.carry: pd.DataFrame | None = None
        self.carry_id: str | None = None
        self.finished: set[str] = set()
        self.bad: dict[str, str] = {}  # open series already known bad → the first reason
        self.rows = 0  # data rows read before the current chunk

    def feed(self, raw: pd.DataFrame) -> _Batch:
        ids = self._ids(raw[self.id_column])
        self._check_contiguous(ids)
        frame = self._parse(raw, ids)
        self.rows += len(raw)
        both = frame if self.carry is None else pd.concat([self.carry, frame], ignore_index=True)
        # Contiguity holds, so the rows with the last id are exactly the still open block.
        is_open = (both[SERIES_ID] == ids[-1]).to_numpy()
        self.carry = _last_rows(both[is_open], self.ts_col, self.lookback)
        return self._emit(both[~is_open])

    def finish(self) -> _Batch:
        done, self.carry, self.carry_id = self.carry, None, None
        return self._emit(done)

    def _ids(self, raw: pd.Series) -> np.ndarray:
        ids = raw.astype(str).to_numpy(dtype=object)
        empty = raw.isna().to_numpy() | (ids == "")
        if empty.any():
            row = self.rows + int(np.flatnonzero(empty)[0]) + 1
            raise DataError(f"{self.source}: column {self.id_column!r} row {row} is empty; "
                            "every row needs a series id (fill it or drop the row)")
        return ids

    def _check_contiguous(self, ids: np.ndarray) -> None:
        current = self.carry_id
        for pos in _block_starts(ids):
            sid = ids[pos]
            if sid == current:
                continue  # the open series goes on
            if sid in self.finished:
                raise DataError(
                    f"{self.source}: series {sid!r} appears again at row {self.rows + pos + 1} "
                    f"after rows of other series; each series' rows must be contiguous: sort "
                    f"the file by {self.id_column!r} (the order within a series does not matter)")
            if current is not None:
                self.finished.add(current)
            current = sid
        self.carry_id = current

    def _mark(self, ids: np.ndarray, mask: np.ndarray, why: Callable[[int], str]) -> None:
        """Record the first problem of each series with a row in `mask`."""
        for pos in pd.Series(np.flatnonzero(mask)).groupby(ids[mask], sort=False).first():
            self.bad.setdefault(ids[pos], why(int(pos)))

    def _parse(self, raw: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
        row0 = self.rows + 1
        stamps = _parse_stamps(raw[self.ts_column], self.source)
        no_time = stamps.isna().to_numpy()
        if no_time.any():
            col = raw[self.ts_column]
            self._mark(ids, no_time, lambda p: _stamp_problem(col, p, row0 + p))
        columns: dict[str, object] = {SERIES_ID: ids, self.ts_col: stamps.to_numpy()}
        for c in self.channels:
            num, bad = _numbers(raw[c])
            if bad.any():
                self._mark(ids, bad, lambda p, c=c: _value_problem(raw[c], p, c, row0 + p))
            columns[c] = num
        frame = pd.DataFrame(columns)
        return frame[~no_time] if no_time.any() else frame

    def _emit(self, done: pd.DataFrame | None) -> _Batch:
        bad: list[tuple[str, str]] = []
        tails = None
        if done is not None and len(done):
            tails = _last_rows(done, self.ts_col, self.lookback)
            ids = tails[SERIES_ID].to_numpy()
            bad = [(s, self.bad.pop(s)) for s in ids[_block_starts(ids)] if s in self.bad]
            if bad:
                tails = tails[~np.isin(ids, [s for s, _ in bad])].reset_index(drop=True)
        # A finished series none of whose timestamps could be read has no rows to emit.
        bad += [(s, self.bad.pop(s)) for s in list(self.bad) if s != self.carry_id]
        n = 0 if tails is None else len(_block_starts(tails[SERIES_ID].to_numpy()))
        return _Batch(tails if n else None, n, bad)


def _long_batches(reader: _Reader, forecaster: Forecaster, options: BatchOptions,
                  ts_column: str) -> Iterator[_Batch]:
    channels, have = forecaster.channels, set(reader.columns)
    problems = []
    if ts_column not in have:
        problems.append(f"no timestamp column {ts_column!r}: pass --timestamp-column")
    if options.id_column not in have:
        problems.append(f"no id column {options.id_column!r}: pass --id-column, or --layout "
                        "wide for a file with one column per series")
    if not set(channels) <= have:
        problems.append(f"channel column(s) {[c for c in channels if c not in have]} missing: "
                        f"the model forecasts {channels}")
    for flag, column in (("--id-column", options.id_column), ("--timestamp-column", ts_column)):
        if column in channels:
            problems.append(f"{flag} {column!r} is one of the model's channels {channels}; "
                            f"pass {flag} naming another column")
    if options.id_column == ts_column and ts_column in have and ts_column not in channels:
        problems.append(f"--id-column and --timestamp-column both name {ts_column!r}; the "
                        "series ids and the times need a column each")
    if problems:
        raise DataError(f"{reader.path}: {'; '.join(problems)} (columns: {reader.columns[:20]})")
    tails = _LongTails(forecaster, options.id_column, ts_column, str(reader.path))
    columns = list(dict.fromkeys([options.id_column, ts_column, *channels]))
    for raw in reader.chunks(columns, options.read_rows, text=[options.id_column, ts_column],
                             verbatim=[options.id_column]):
        if len(raw):
            yield tails.feed(raw)
    yield tails.finish()


def _wide_batches(reader: _Reader, forecaster: Forecaster, options: BatchOptions,
                  ts_column: str) -> Iterator[_Batch]:
    """Keep the last `lookback` rows of all series while streaming, then hand them out
    `chunk_size` columns at a time."""
    if len(forecaster.channels) != 1:
        raise DataError(f"--layout wide holds one value per series and time step, but the model "
                        f"has channels {forecaster.channels}; use --layout long with columns "
                        f"{options.id_column}, {ts_column}, {', '.join(forecaster.channels)}")
    if ts_column not in reader.columns:
        raise DataError(f"{reader.path}: no timestamp column {ts_column!r}; pass "
                        f"--timestamp-column (columns: {reader.columns[:20]})")
    series = [c for c in reader.columns if c != ts_column]
    if not series:
        raise DataError(f"{reader.path}: no series columns besides {ts_column!r}")
    lookback, ts_col, channel = forecaster.lookback, forecaster.meta.timestamp_column, \
        forecaster.channels[0]
    stamps: np.ndarray | None = None  # [rows] the last `lookback` timestamps seen
    values = np.zeros((0, len(series)))  # [rows x series]
    bad: dict[str, str] = {}
    rows = 0
    # Rows per read so that a chunk holds about `read_rows` values however many series.
    per_read = max(16, options.read_rows // len(series))
    for raw in reader.chunks([ts_column, *series], per_read, text=[ts_column], verbatim=[]):
        parsed = _parse_stamps(raw[ts_column], str(reader.path))
        if parsed.isna().any():
            pos = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataError(f"{reader.path}: {_stamp_problem(raw[ts_column], pos, rows + pos + 1)}"
                            "; fix the value or drop the row")
        sub = raw[series]
        if all(pd.api.types.is_numeric_dtype(t) for t in sub.dtypes):
            block = sub.to_numpy(dtype=np.float64, na_value=np.nan)
            suspects = [series[j] for j in np.flatnonzero(np.isinf(block).any(axis=0))]
        else:  # text somewhere: convert column by column to find it
            block = np.column_stack([_numbers(sub[c])[0] for c in series])
            suspects = series
        for c in suspects:
            problems = _numbers(sub[c])[1]
            if problems.any() and c not in bad:
                pos = int(np.flatnonzero(problems)[0])
                bad[c] = _value_problem(sub[c], pos, c, rows + pos + 1)
        rows += len(raw)
        chunk_stamps = parsed.to_numpy()
        stamps = chunk_stamps if stamps is None else np.concatenate([stamps, chunk_stamps])
        values = np.vstack([values, block])
        keep = np.argsort(stamps, kind="stable")[-lookback:]  # the last rows by time
        stamps, values = stamps[keep], values[keep]
    if stamps is None:
        raise DataError(f"{reader.path}: no rows")
    n = len(stamps)
    for lo in range(0, len(series), options.chunk_size):
        names = series[lo: lo + options.chunk_size]
        good = [j for j, c in enumerate(names) if c not in bad]
        tails = pd.DataFrame({
            SERIES_ID: np.repeat(np.asarray(names, dtype=object)[good], n),
            ts_col: np.tile(stamps, len(good)),
            channel: values[:, lo:lo + len(names)][:, good].T.reshape(-1),
        })
        yield _Batch(tails if good else None, len(good),
                     [(c, bad[c]) for c in names if c in bad])


def _rebatch(batches: Iterable[_Batch], size: int) -> Iterator[_Batch]:
    """Regroup into batches of exactly `size` series (the last may hold fewer); problems
    found while reading pass on at once, in a batch of their own."""
    pending: list[pd.DataFrame] = []
    for batch in batches:
        if batch.bad:
            yield _Batch(None, 0, batch.bad)
        if batch.tails is not None:
            pending.append(batch.tails)
        frame = pd.concat(pending, ignore_index=True) if len(pending) > 1 else \
            pending[0] if pending else None
        if frame is None:
            continue
        starts = _block_starts(frame[SERIES_ID].to_numpy())
        i = 0
        while len(starts) - i >= size:
            hi = starts[i + size] if i + size < len(starts) else len(frame)
            yield _Batch(frame.iloc[starts[i]:hi], size)
            i += size
        pending = [frame.iloc[starts[i]:]] if i < len(starts) else []
    if pending:
        rest = pending[0]
        yield _Batch(rest, len(_block_starts(rest[SERIES_ID].to_numpy())))


def _forecast(forecaster: Forecaster, tails: pd.DataFrame, horizon: int, model_name: str,
              model_version: str, wide: bool) -> tuple[pd.DataFrame | None,
                                                     list[tuple[str, str]]]:
    """Forecast a batch in one forward pass. If a series in it is bad, validate them one by
    one (no forward pass) and forecast the good ones together: the fast path stays batched."""
    channel = forecaster.channels[0] if wide else None
    bad: list[tuple[str, str]] = []
    try:
        ids, values, stamps = forecaster.histories(tails)
        forecast = forecaster.predict_arrays(values, horizon, ids)
    except DataError:
        ids, values, stamps = [], [], []
        sid_column = tails[SERIES_ID].to_numpy()
        starts = _block_starts(sid_column)
        for lo, hi in zip(starts, np.r_[starts[1:], len(tails)], strict=True):
            sid = str(sid_column[lo])
            try:
                one_ids, one_values, one_stamps = forecaster.histories(tails.iloc[lo:hi])
                forecaster.check_history(one_values[0], f"series {sid!r}")
            except DataError as err:
                bad.append((sid, _reason(err, sid, channel)))
                continue
            ids += one_ids
            values += one_values
            stamps += one_stamps or []
        # a valid history can still overflow inside the model: that series is bad, not the job
        forecast = forecaster.unchecked_forecast(values, horizon, ids) if ids else np.empty(0)
        broken = [i for i in range(len(ids)) if not np.isfinite(forecast[i]).all()]
        for i in broken:
            bad.append((ids[i], _reason(DataError(forecaster.overflow(values, ids, i)), ids[i],
                                         channel)))
        keep = [i for i in range(len(ids)) if i not in set(broken)]
        if not keep:
            return None, bad
        forecast = forecast[keep]
        ids, stamps = [ids[i] for i in keep], [stamps[i] for i in keep]
    assert stamps is not None  # tails always carry timestamps
    out = forecaster.to_frame(forecast, ids, stamps)
    out.insert(1, ORIGIN, pd.DatetimeIndex([s[-1] for s in stamps]).repeat(horizon))
    out = out.rename(columns={forecaster.meta.timestamp_column: TIMESTAMP})
    out[MODEL_NAME] = model_name
    out[MODEL_VERSION] = model_version
    return out, bad


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


def _check(options: BatchOptions) -> str:
    """Option checks that need no model; returns the output kind."""
    out = Path(options.output)
    kind = SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise ConfigError(f"--output {str(out)!r}: use a .parquet (or .pq) or .csv file name")
    if options.layout not in ("long", "wide"):
        raise ConfigError(f"--layout {options.layout!r}: use 'long' or 'wide'")
    if options.on_bad_series not in ("skip", "fail"):
        raise ConfigError(f"--on-bad-series {options.on_bad_series!r}: use 'skip' or 'fail'")
    for name in ("chunk_size", "read_rows"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be "
                              "at least 1")
    if out.resolve() == Path(options.input).resolve():
        raise ConfigError(f"--output {str(out)!r} is the input file; write elsewhere")
    return kind


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
    reader = _Reader(Path(options.input))
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
    horizon = forecaster.horizon if options.horizon is None else options.horizon
    if not 1 <= horizon <= forecaster.horizon:
        raise ConfigError(f"--horizon {horizon}: model {model.name} (version {model.version}) "
                          f"forecasts 1 to {forecaster.horizon} steps; pass one of those")
    ts_column = options.timestamp_column or forecaster.meta.timestamp_column
    log.info("model %s (version %s): lookback %d, horizon %d, channels %s; reading %s (%s layout)",
             model.name, model.version, forecaster.lookback, horizon, forecaster.channels,
             reader.path, options.layout)
    read = (_long_batches if options.layout == "long" else _wide_batches)(
        reader, forecaster, options, ts_column)
    # timestamps with offsets are read in UTC; the output then says UTC, or it reads as local
    # time. The file's first rows decide, so that every chunk has one column type.
    first = next(reader.chunks([ts_column], 1000, text=[ts_column], verbatim=[]), None) \
        if ts_column in reader.columns else None
    utc = first is not None and has_utc_offset(first[ts_column])

    writer = _AtomicWriter(output, out_kind)
    skipped: list[tuple[str, str]] = []
    done = chunks = 0
    try:
        for batch in _rebatch(read, options.chunk_size):
            bad = list(batch.bad)
            if batch.tails is not None:
                frame, more = _forecast(forecaster, batch.tails, horizon, model.name,
                                        model.version, options.layout == "wide")
                if frame is not None and utc:
                    frame[[ORIGIN, TIMESTAMP]] = frame[[ORIGIN, TIMESTAMP]].apply(
                        lambda c: c.dt.tz_localize("UTC"))
                bad += more
                if frame is not None:
                    writer.write(frame)
                    done += len(frame) // horizon
            if bad and options.on_bad_series == "fail":
                sid, reason = bad[0]
                raise DataError(f"series {sid!r}: {reason}; --on-bad-series is 'fail': fix it, "
                                "or pass --on-bad-series skip to forecast the others and list "
                                f"the bad ones in {errors_path}")
            skipped += bad
            if batch.tails is not None:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `forecast pipeline batch-forecast`."""
    from forecast.cli import column, positive_int, tracking_uri  # forecast.cli imports us

    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION "
                   "or a model directory written by `forecast train`")
    p.add_argument("--input", required=True, help="series file, .csv or .parquet")
    p.add_argument("--output", required=True, help="forecast file, .parquet or .csv; bad "
                   "series are listed in <stem>.errors.csv beside it")
    p.add_argument("--layout", choices=["long", "wide"], default="long",
                   help="long: id, timestamp, channel columns, a series' rows together; wide: "
                   "timestamp plus one column per series (single-channel models)")
    p.add_argument("--chunk-size", type=positive_int, default=2000,
                   help="series per forward pass (default 2000)")
    p.add_argument("--read-rows", type=positive_int, default=200_000,
                   help="rows per read chunk (default 200000); bounds memory only")
    p.add_argument("--horizon", type=positive_int, help="steps to forecast (default: the "
                   "model's)")
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow tracking URI for models:/ "
                   "(default $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)")
    p.add_argument("--timestamp-column", type=column,
                   help="default: the model's timestamp column")
    p.add_argument("--id-column", type=column, default="series_id",
                   help="series id column (long layout)")
    p.add_argument("--on-bad-series", choices=["skip", "fail"], default="skip",
                   help="skip (default): forecast the others and list the bad ones; fail: stop")


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(
        model=args.model, input=Path(args.input), output=Path(args.output), layout=args.layout,
        chunk_size=args.chunk_size, horizon=args.horizon, tracking_uri=args.tracking_uri,
        timestamp_column=args.timestamp_column, id_column=args.id_column,
        on_bad_series=args.on_bad_series, read_rows=args.read_rows)


def run_from_args(args: argparse.Namespace) -> int:
    s = batch_forecast(options_from_args(args))
    skipped = f"{s.series_skipped:,} skipped (see {s.errors_file})" if s.series_skipped \
        else "none skipped"
    if args.log_format != "json":  # JSON: every line is one object
        print(f"forecast {s.series_forecast:,} series with {s.model_name} (version "
              f"{s.model_version}), "
              f"{skipped}: {s.rows:,} rows in {s.output}, {s.seconds:.1f}s "
              f"({s.series_per_second:,.0f} series/s, peak RSS {s.peak_rss_mb:.0f} MB)")
    print(json.dumps(asdict(s)))
    return 0


if __name__ == "__main__":
    from forecast.cli import main

    sys.exit(main(["pipeline", "batch-forecast", *sys.argv[1:]]))
