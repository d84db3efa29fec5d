"""Reading many series from one file in bounded memory: CSV chunks or Parquet row batches →
the last `lookback` rows of each series by time, in batches of whole series. A series whose
rows cannot be read (an unparsable time or value, too short, a gap) is set aside with its
reason instead of stopping the read. Long layout: a series' rows are contiguous; wide
layout: one column per series."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecast.data import (
    SUFFIXES,
    check_csv_header,
    shown_value,
    to_datetime_column,
)
from forecast.errors import DataError
from forecast.predictor import Forecaster

# the id column's name in the frames handed on, whatever the file calls it
SERIES_ID = "series_id"

# pandas' default missing-value markers, applied to value and timestamp columns only: an id
# such as "NA" (North America) must stay an id.
NA_TOKENS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass
class Batch:
    """Complete series ready to forecast (last `lookback` rows each, contiguous, time-sorted)
    and series already found bad while reading, as (id, reason)."""

    tails: pd.DataFrame | None
    n_series: int
    bad: list[tuple[str, str]] = field(default_factory=list)


def block_starts(ids: np.ndarray) -> np.ndarray:
    """Row positions where a new id starts, in a column whose series are contiguous."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])


def _last_rows(frame: pd.DataFrame, ts_col: str, lookback: int) -> pd.DataFrame:
    """Each series' last `lookback` rows by time, series in their order, rows time-sorted."""
    ids = frame[SERIES_ID].to_numpy()
    n = len(ids)
    starts = block_starts(ids)
    sizes = np.diff(np.r_[starts, n])
    block = np.repeat(np.arange(len(starts)), sizes)
    stamps = frame[ts_col].to_numpy().view("i8")
    later = np.diff(stamps) > 0
    later[starts[1:] - 1] = True  # a series' first row may be earlier than the one before it
    # files are usually written in time order: then there is nothing to sort
    order = np.arange(n) if later.all() else np.lexsort((stamps, block))  # stable for ties
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


def _at(row: int | None) -> str:
    """' row N' where the file's row numbers are known (not on Spark, which reads in parts)."""
    return "" if row is None else f" row {row}"


def _stamp_problem(raw: pd.Series, pos: int, row: int | None) -> str:
    shown = shown_value(raw, pos)
    hint = " (a number: does --timestamp-column name the time column?)" \
        if shown != "an empty value" and _is_number(raw.iloc[pos]) else ""
    return (f"timestamp column {raw.name!r}{_at(row)} has {shown}, which is not a "
            f"timestamp{hint}")


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


def _value_problem(raw: pd.Series, pos: int, column: str, row: int | None) -> str:
    value = raw.iloc[pos]
    if isinstance(value, float | np.floating):
        return f"column {column!r}{_at(row)} is infinite"
    return f"column {column!r}{_at(row)} has {value!r}, which is not a number"


def bad_series_reason(err: DataError, sid: str, channel: str | None) -> str:
    """The message without the id, which is the errors file's first column. `channel`: the
    model's channel, in the wide layout, where the file's column is the series itself."""
    msg = str(err)
    for prefix in (f"history: series {sid!r}: ", f"series {sid!r}: ", "history: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    return msg if channel is None else msg.replace(f"column {channel!r}", f"column {sid!r}")


class Reader:
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
                # pre_buffer (pyarrow's default) keeps every column chunk read so far until the
                # file is closed: memory would grow with the file, ~8 bytes a row
                parquet = pq.ParquetFile(self.path, pre_buffer=False)
                for batch in parquet.iter_batches(batch_size=rows, columns=columns):
                    yield batch.to_pandas()
        except (ValueError, OSError, pa.ArrowException) as err:
            raise DataError(f"could not read {str(self.path)!r} as {self.kind}: {err}") from None


class LongTails:
    """Read chunks of a long file → the last `lookback` rows of each series whose block ended.

    Only the series still open at a chunk's end is carried over, trimmed to `lookback` rows,
    so memory does not grow with the file. `row_numbers`: name the file's row in problems
    (off where rows arrive in parts, as on Spark)."""

    def __init__(self, forecaster: Forecaster, id_column: str, ts_column: str,
                 source: str, row_numbers: bool = True) -> None:
        self.row_numbers = row_numbers
        self.lookback = forecaster.lookback
        self.channels = forecaster.channels
        self.ts_col = forecaster.meta.timestamp_column  # the name Forecaster.histories reads
        self.id_column, self.ts_column, self.source = id_column, ts_column, source
        self.carry: pd.DataFrame | None = None
        self.carry_id: str | None = None
        self.finished: set[str] = set()
        self.bad: dict[str, str] = {}  # open series already known bad → the first reason
        self.rows = 0  # data rows read before the current chunk

    def feed(self, raw: pd.DataFrame) -> Batch:
        ids = self._ids(raw[self.id_column])
        self._check_contiguous(ids)
        frame = self._parse(raw, ids)
        self.rows += len(raw)
        both = frame if self.carry is None else pd.concat([self.carry, frame], ignore_index=True)
        # Contiguity holds, so the last block of rows is the still open series, unless none
        # of that series' rows had a readable time
        sids = both[SERIES_ID].to_numpy()
        open_from = int(block_starts(sids)[-1]) if len(sids) and sids[-1] == ids[-1] \
            else len(sids)
        self.carry = _last_rows(both.iloc[open_from:], self.ts_col, self.lookback)
        return self._emit(both.iloc[:open_from])

    def finish(self) -> Batch:
        done, self.carry, self.carry_id = self.carry, None, None
        return self._emit(done)

    def _ids(self, raw: pd.Series) -> np.ndarray:
        # one str object per distinct id, shared by its rows: far cheaper than one per row
        codes, uniques = pd.factorize(raw.astype(str))
        ids = np.asarray(uniques, dtype=object)[codes] if len(uniques) else \
            np.zeros(len(raw), dtype=object)
        empty = raw.isna().to_numpy() | (ids == "")
        if empty.any():
            row = self.rows + int(np.flatnonzero(empty)[0]) + 1
            raise DataError(f"{self.source}: column {self.id_column!r} row {row} is empty; "
                            "every row needs a series id (fill it or drop the row)")
        return ids

    def _check_contiguous(self, ids: np.ndarray) -> None:
        current = self.carry_id
        for pos in block_starts(ids):
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

    def _row(self, pos: int) -> int | None:
        return self.rows + pos + 1 if self.row_numbers else None

    def _parse(self, raw: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
        stamps = _parse_stamps(raw[self.ts_column], self.source)
        no_time = stamps.isna().to_numpy()
        if no_time.any():
            col = raw[self.ts_column]
            self._mark(ids, no_time, lambda p: _stamp_problem(col, p, self._row(p)))
        # object dtype kept: pandas would store text as Arrow strings, and every later
        # `.to_numpy()` of the column would build a Python str per row again
        columns: dict[str, object] = {SERIES_ID: pd.Series(ids, dtype=object),
                                      self.ts_col: stamps.to_numpy()}
        for c in self.channels:
            num, bad = _numbers(raw[c])
            if bad.any():
                self._mark(ids, bad, lambda p, c=c: _value_problem(raw[c], p, c, self._row(p)))
            columns[c] = num
        frame = pd.DataFrame(columns)
        return frame[~no_time] if no_time.any() else frame

    def _emit(self, done: pd.DataFrame | None) -> Batch:
        bad: list[tuple[str, str]] = []
        tails = None
        if done is not None and len(done):
            tails = _last_rows(done, self.ts_col, self.lookback)
            ids = tails[SERIES_ID].to_numpy()
            bad = [(s, self.bad.pop(s)) for s in ids[block_starts(ids)] if s in self.bad]
            if bad:
                tails = tails[~np.isin(ids, [s for s, _ in bad])].reset_index(drop=True)
        # A finished series none of whose timestamps could be read has no rows to emit.
        bad += [(s, self.bad.pop(s)) for s in list(self.bad) if s != self.carry_id]
        n = 0 if tails is None else len(block_starts(tails[SERIES_ID].to_numpy()))
        return Batch(tails if n else None, n, bad)


def check_long_columns(columns: list[str], source: str, forecaster: Forecaster,
                       ts_column: str, id_column: str) -> None:
    """A long file's columns hold an id, a time and every channel, each in its own column."""
    channels, have = forecaster.channels, set(columns)
    problems = []
    if ts_column not in have:
        problems.append(f"no timestamp column {ts_column!r}: pass --timestamp-column")
    if id_column not in have:
        problems.append(f"no id column {id_column!r}: pass --id-column, or --layout "
                        "wide for a file with one column per series")
    if not set(channels) <= have:
        problems.append(f"channel column(s) {[c for c in channels if c not in have]} missing: "
                        f"the model forecasts {channels}")
    for flag, column in (("--id-column", id_column), ("--timestamp-column", ts_column)):
        if column in channels:
            problems.append(f"{flag} {column!r} is one of the model's channels {channels}; "
                            f"pass {flag} naming another column")
    if id_column == ts_column and ts_column in have and ts_column not in channels:
        problems.append(f"--id-column and --timestamp-column both name {ts_column!r}; the "
                        "series ids and the times need a column each")
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)} (columns: {columns[:20]})")


def long_batches(reader: Reader, forecaster: Forecaster, ts_column: str,
                 id_column: str, read_rows: int) -> Iterator[Batch]:
    check_long_columns(reader.columns, str(reader.path), forecaster, ts_column, id_column)
    channels = forecaster.channels
    tails = LongTails(forecaster, id_column, ts_column, str(reader.path))
    columns = list(dict.fromkeys([id_column, ts_column, *channels]))
    for raw in reader.chunks(columns, read_rows, text=[id_column, ts_column],
                             verbatim=[id_column]):
        if len(raw):
            yield tails.feed(raw)
    yield tails.finish()


def wide_series(columns: list[str], source: str, forecaster: Forecaster, ts_column: str,
                id_column: str) -> list[str]:
    """A wide file's series columns, checked: a time column, and a single-channel model."""
    if len(forecaster.channels) != 1:
        raise DataError(f"--layout wide holds one value per series and time step, but the model "
                        f"has channels {forecaster.channels}; use --layout long with columns "
                        f"{id_column}, {ts_column}, {', '.join(forecaster.channels)}")
    if ts_column not in columns:
        raise DataError(f"{source}: no timestamp column {ts_column!r}; pass "
                        f"--timestamp-column (columns: {columns[:20]})")
    series = [c for c in columns if c != ts_column]
    if not series:
        raise DataError(f"{source}: no series columns besides {ts_column!r}")
    return series


def wide_batches(reader: Reader, forecaster: Forecaster, ts_column: str, id_column: str,
                 read_rows: int, chunk_size: int) -> Iterator[Batch]:
    """Keep the last `lookback` rows of all series while streaming, then hand them out
    `chunk_size` columns at a time."""
    series = wide_series(reader.columns, str(reader.path), forecaster, ts_column, id_column)
    lookback, ts_col, channel = forecaster.lookback, forecaster.meta.timestamp_column, \
        forecaster.channels[0]
    stamps: np.ndarray | None = None  # [rows] the last `lookback` timestamps seen
    values = np.zeros((0, len(series)))  # [rows x series]
    bad: dict[str, str] = {}
    rows = 0
    # Rows per read so that a chunk holds about `read_rows` values however many series.
    per_read = max(16, read_rows // len(series))
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
    for lo in range(0, len(series), chunk_size):
        names = series[lo: lo + chunk_size]
        good = [j for j, c in enumerate(names) if c not in bad]
        tails = pd.DataFrame({
            SERIES_ID: np.repeat(np.asarray(names, dtype=object)[good], n),
            ts_col: np.tile(stamps, len(good)),
            channel: values[:, lo:lo + len(names)][:, good].T.reshape(-1),
        })
        yield Batch(tails if good else None, len(good),
                     [(c, bad[c]) for c in names if c in bad])


def rebatch(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Regroup into batches of exactly `size` series (the last may hold fewer); problems
    found while reading pass on at once, in a batch of their own."""
    pending: list[pd.DataFrame] = []
    for batch in batches:
        if batch.bad:
            yield Batch(None, 0, batch.bad)
        if batch.tails is not None:
            pending.append(batch.tails)
        frame = pd.concat(pending, ignore_index=True) if len(pending) > 1 else \
            pending[0] if pending else None
        if frame is None:
            continue
        starts = block_starts(frame[SERIES_ID].to_numpy())
        i = 0
        while len(starts) - i >= size:
            hi = starts[i + size] if i + size < len(starts) else len(frame)
            yield Batch(frame.iloc[starts[i]:hi], size)
            i += size
        pending = [frame.iloc[starts[i]:]] if i < len(starts) else []
    if pending:
        rest = pending[0]
        yield Batch(rest, len(block_starts(rest[SERIES_ID].to_numpy())))

