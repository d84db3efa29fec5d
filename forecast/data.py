"""Load and validate series from CSV/Parquet, wide or long layout.

Every check stops with a `DataError` that names the column, the row and the fix. The result is
a `SeriesSet`: one float32 array [time x channels] per series on a regular time index.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from forecast.config import DataConfig
from forecast.errors import DataError

log = logging.getLogger(__name__)

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class SeriesSet:
    """Validated series, all with the same channels and frequency."""

    ids: list[str]
    values: list[np.ndarray]  # each [T_i x C], float32
    timestamps: list[pd.DatetimeIndex]
    channels: list[str]
    freq: str
    source: str = "<memory>"
    digest: str = ""  # sha256 of the source file's bytes
    notes: list[str] = field(default_factory=list)

    @property
    def newest(self) -> pd.Timestamp:
        """The latest timestamp of all series, in UTC (naive timestamps are taken as UTC)."""
        newest = max(stamps[-1] for stamps in self.timestamps)
        return newest.tz_localize("UTC") if newest.tzinfo is None else newest.tz_convert("UTC")

    @property
    def n_rows(self) -> int:
        return sum(len(v) for v in self.values)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_table(path: str | Path, given_by: str = "data.path or --data") -> pd.DataFrame:
    """Read a CSV or Parquet file into a frame, with errors that say what to do; `given_by`
    names the setting or flag that named the file."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "not found"
        raise DataError(f"data file {str(p)!r} {what}; check {given_by}")
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"data file {str(p)!r} has suffix {p.suffix!r}; use .csv, .parquet or .pq"
        )
    try:
        frame = pd.read_csv(p) if kind == "csv" else pd.read_parquet(p)
    except Exception as err:  # the readers raise many types; all mean "unreadable file"
        raise DataError(f"could not read {str(p)!r} as {kind}: {err}") from None
    if frame.empty:
        raise DataError(f"data file {str(p)!r} has no rows")
    if kind == "csv":
        check_csv_header(p)
    return frame


def check_csv_header(path: Path) -> None:
    """Refuse a header that names a column twice: pandas renames the second `a` to `a.1`,
    which would then be forecast as a series of its own."""
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{str(path)!r}: the header names {repeated} more than once; give each "
                        "column its own name")


# a UTC offset (Z, +05:00, -0800, +05) after a clock time (15, 15:00, 1500, 15:00:00.5), at
# the end of an ISO-8601 string: the forms pandas parses as time-zone aware
UTC_OFFSET = r"[T ]\d{2}(?::?\d{2}){0,2}(?:\.\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def has_utc_offset(raw: pd.Series) -> bool:
    """Whether a timestamp column carries time zones (read as UTC, so results say UTC too)."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return True
    if pd.api.types.is_datetime64_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype):
        return False
    return bool(raw.dropna().astype(str).str.contains(UTC_OFFSET, regex=True).any())


def load_series(cfg: DataConfig) -> SeriesSet:
    """Read `cfg.path` and validate it (see `frame_to_series`)."""
    if cfg.path is None:
        raise DataError("data.path is not set; pass --data FILE or set data.path in the config")
    path = Path(cfg.path)
    frame = read_table(path)
    series = frame_to_series(frame, cfg, source=str(path))
    series.digest = file_sha256(path)
    return series


def shown_value(raw: pd.Series, pos: int) -> str:
    """The value at `pos` as an error message quotes it: a Python value (nan, not
    np.float64(nan)), "an empty value" for a missing one; a list cell stays a list."""
    value = raw.iloc[pos:pos + 1].tolist()[0]
    return "an empty value" if pd.api.types.is_scalar(value) and pd.isna(value) else repr(value)


def _row_label(pos: int) -> str:
    # 1-based data rows, as a spreadsheet shows them (a CSV's file line is this plus 1).
    return f"row {pos + 1}"


def to_datetime_column(raw: pd.Series, source: str, column: str,
                       refuse_ambiguous: bool = True) -> pd.Series:
    """A column of timestamp text as UTC datetimes, NaT where a value does not parse.

    ISO 8601 first; otherwise one format for the whole column, guessed from its first value
    (day-first or month-first, whichever reads every value). Parsing each value on its own
    (pandas' "mixed") read 02/01/2024 as 1 February and 13/01/2024 as 13 January in one
    column. Only a column with no guessable format is parsed value by value. A column that
    reads both ways (every day at most 12) is refused, or with `refuse_ambiguous=False` read
    month-first, pandas' default."""
    # utc=True: without it a column whose UTC offset changes (daylight saving) raises
    # "Mixed timezones" instead of parsing; naive values are taken as they are
    iso = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    if not (iso.isna() & raw.notna()).any():
        return iso
    first = str(raw.dropna().iloc[0]) if raw.notna().any() else ""
    with warnings.catch_warnings():  # "parsing dates in %d/%m/%Y format when dayfirst=False":
        warnings.filterwarnings("ignore", "Parsing dates in", UserWarning)  # tried on purpose
        candidates = dict.fromkeys(f for f in (guess_datetime_format(first),
                                              guess_datetime_format(first, dayfirst=True)) if f)
    if not candidates:  # e.g. "1/10/2024 1:00 PM"
        return pd.to_datetime(raw, errors="coerce", format="mixed", utc=True)
    parses = {f: pd.to_datetime(raw, errors="coerce", format=f, utc=True) for f in candidates}
    misses = {f: int((v.isna() & raw.notna()).sum()) for f, v in parses.items()}
    complete = [f for f, n in misses.items() if n == 0]
    if len(complete) > 1 and refuse_ambiguous:
        raise DataError(
            f"{source}: column {column!r} reads as {complete[0]!r} and as {complete[1]!r} "
            f"(e.g. {first!r}): day and month cannot be told apart; write the timestamps as "
            "ISO 8601 (2024-01-31 13:00)"
        )
    # the fewest misses, month-first on a tie; the values missed are the caller's to name
    return parses[min(misses, key=misses.__getitem__)]


# How a data error ends: whoever reads a data file can change the config's data settings; a
# history sent for a forecast (predict, the MLflow model, batch forecasting) can only be fixed.
FILE_FIXES = {
    "timestamp_column": "set data.timestamp_column",
    "numeric_time": "write them as ISO 8601 (2024-01-31 13:00), or set data.timestamp_column "
                    "to the column that holds the times",
    "columns": "set data.columns to existing columns",
    "value": "fix the value or leave {column!r} out of data.columns",
    "missing": "data.missing is 'error' (the default): set data.missing to 'interpolate' or "
               "'ffill', or fill the file",
    "gaps": "data.missing is 'error' (the default): set it to 'interpolate' or 'ffill' to fill "
            "gaps, or fix the file",
    "off_grid": "fix it or set data.freq",
}
HISTORY_FIXES = {
    "timestamp_column": "name the time column as the model does",
    "numeric_time": "write them as ISO 8601 (2024-01-31 13:00)",
    "columns": "send a column for each of the model's channels",
    "value": "fix the value",
    "missing": "send a value for every step (a forecast fills no gaps)",
    "gaps": "send every step of the history (a forecast fills no gaps)",
    "off_grid": "send timestamps on the model's {freq!r} grid",
}


def _parse_timestamps(frame: pd.DataFrame, column: str, source: str,
                      fixes: Mapping[str, str]) -> pd.Series:
    if column not in frame.columns:
        raise DataError(
            f"{source}: timestamp column {column!r} not found (columns: {list(frame.columns)}); "
            + fixes["timestamp_column"]
        )
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        # pandas would read 20240101 or 1704067200 as nanoseconds after 1970
        first = raw.dropna().head(1).tolist()  # Python values: 0, not np.int64(0)
        if first:  # an empty column is named below, at its first row
            raise DataError(f"{source}: timestamp column {column!r} holds numbers "
                            f"({first[0]!r}, ...), not times; " + fixes["numeric_time"])
    parsed = to_datetime_column(raw, source, column)
    bad = parsed.isna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        shown = shown_value(raw, pos)
        raise DataError(
            f"{source}: column {column!r} {_row_label(pos)} has {shown}, "
            "which is not a timestamp; fix the value or drop the row "
            f"({int(bad.sum())} unparsable in all)"
        )
    return parsed.dt.tz_localize(None)


def numeric_columns(frame: pd.DataFrame, columns: list[str], source: str,
                    fixes: Mapping[str, str] = FILE_FIXES) -> pd.DataFrame:
    """`columns` of `frame` as float64, refusing text, booleans, infinities and values beyond
    float32 with an error naming column and row; empty cells stay NaN."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found (columns: {list(frame.columns)}); "
            + fixes["columns"]
        )
    out = {}
    for c in columns:
        col = frame[c]
        if pd.api.types.is_bool_dtype(col):
            raise DataError(f"{source}: column {c!r} is boolean; forecast numeric columns only")
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: column {c!r} is not numeric: {_row_label(pos)} has "
                f"{col.iloc[pos]!r}; " + fixes["value"].format(column=c)
            )
        num = num.astype("float64")
        inf = np.isinf(num.to_numpy())
        if inf.any():
            pos = int(np.flatnonzero(inf)[0])
            raise DataError(
                f"{source}: column {c!r} {_row_label(pos)} is infinite; "
                "replace it with a finite value or leave it empty"
            )
        big = np.abs(num.to_numpy()) > np.finfo(np.float32).max
        if big.any():  # the model computes in float32: such a value would become inf there
            pos = int(np.flatnonzero(big)[0])
            raise DataError(
                f"{source}: column {c!r} {_row_label(pos)} is {num.iloc[pos]:g}, beyond float32's "
                "range (about ±3.4e38) that the model computes in; express the column in a "
                "larger unit"
            )
        out[c] = num
    return pd.DataFrame(out, index=frame.index)


def _resolve_freq(stamps: pd.DatetimeIndex, given: str | None, where: str) -> str:
    if given is not None:
        try:
            offset = pd.tseries.frequencies.to_offset(given)
        except ValueError:
            offset = None
        if offset is None or offset.n <= 0:  # '0h' parses, then divides by zero downstream
            raise DataError(f"data.freq {given!r} is not a positive pandas frequency; use e.g. "
                            "'h', '15min', 'D'")
        return offset.freqstr
    if len(stamps) < 3:
        raise DataError(f"{where}: too few rows to infer the frequency; set data.freq")
    with pd.option_context("future.infer_freq_returns_offset", True):
        inferred = pd.infer_freq(stamps)
    if inferred is None:
        # With gaps infer_freq gives up; the most common step is the intended one.
        # asi8 counts in the index's own unit (s, ms, us or ns); count in ns to match below.
        step = pd.Series(np.diff(stamps.as_unit("ns").asi8)).mode().iloc[0]
        inferred = pd.tseries.frequencies.to_offset(pd.Timedelta(int(step), "ns")).freqstr
    return pd.tseries.frequencies.to_offset(inferred).freqstr


def _fill_missing(values: pd.DataFrame, policy: str, where: str,
                  fixes: Mapping[str, str]) -> pd.DataFrame:
    nan = values.isna()
    if not nan.to_numpy().any():
        return values
    if policy == "error":
        col = next(c for c in values.columns if nan[c].any())
        stamp = values.index[nan[col].to_numpy()][0]
        raise DataError(
            f"{where}: column {col!r} is missing a value at {stamp} "
            f"({int(nan.to_numpy().sum())} missing in all); " + fixes["missing"]
        )
    if policy == "interpolate":
        values = values.interpolate(method="time", limit_direction="both")
    else:
        values = values.ffill().bfill()
    if values.isna().to_numpy().any():
        col = next(c for c in values.columns if values[c].isna().any())
        raise DataError(f"{where}: column {col!r} has no values at all to fill from")
    return values


def _one_series(
    stamps: pd.Series, values: pd.DataFrame, cfg: DataConfig, where: str, notes: list[str],
    fixes: Mapping[str, str],
) -> tuple[pd.DatetimeIndex, pd.DataFrame, str]:
    index = pd.DatetimeIndex(stamps.to_numpy())
    if not index.is_monotonic_increasing:
        order = np.argsort(index.asi8, kind="stable")
        index, values = index[order], values.iloc[order]
        notes.append(f"{where}: rows were not in time order; sorted them")
    dup = index.duplicated()
    if dup.any():
        raise DataError(
            f"{where}: duplicate timestamp {index[dup][0]} ({int(dup.sum())} duplicates in all); "
            "keep one row per timestamp"
        )
    values = values.set_axis(index)
    freq = _resolve_freq(index, cfg.freq, where)
    full = pd.date_range(index[0], index[-1], freq=freq)
    if len(full) != len(index) or not full.equals(index):
        off_grid = index.difference(full)
        if len(off_grid):
            raise DataError(
                f"{where}: timestamp {off_grid[0]} is off the {freq!r} grid that starts at "
                f"{index[0]}; " + fixes["off_grid"].format(freq=freq)
            )
        gaps = full.difference(index)
        if cfg.missing == "error":
            raise DataError(
                f"{where}: {len(gaps)} missing time step(s) at frequency {freq!r}, the first at "
                f"{gaps[0]}; " + fixes["gaps"]
            )
        notes.append(f"{where}: filled {len(gaps)} missing time step(s) ({cfg.missing})")
        values = values.reindex(full)
    values = _fill_missing(values, cfg.missing, where, fixes)
    return pd.DatetimeIndex(values.index), values, freq


def frame_to_series(frame: pd.DataFrame, cfg: DataConfig, source: str = "<memory>",
                    fixes: Mapping[str, str] = FILE_FIXES) -> SeriesSet:
    """Validate a wide or long frame and return regular, complete series."""
    notes: list[str] = [f"missing-value policy: {cfg.missing}"]
    # Rows are grouped by index label below; a repeated label (pd.concat of per-series frames)
    # would pull other series' rows into a series. Positions are what errors report anyway.
    frame = frame.reset_index(drop=True)
    stamps = _parse_timestamps(frame, cfg.timestamp_column, source, fixes)
    if cfg.layout == "wide":
        columns = cfg.columns or [c for c in frame.columns if c != cfg.timestamp_column]
        if not columns:
            raise DataError(f"{source}: no value columns besides {cfg.timestamp_column!r}")
        groups = [("series", frame.index)]
    else:
        if cfg.id_column not in frame.columns:
            raise DataError(
                f"{source}: id column {cfg.id_column!r} not found (columns: "
                f"{list(frame.columns)}); set data.id_column or use data.layout: wide"
            )
        columns = cfg.columns or ["value"]
        if frame[cfg.id_column].isna().any():
            pos = int(np.flatnonzero(frame[cfg.id_column].isna().to_numpy())[0])
            raise DataError(f"{source}: column {cfg.id_column!r} {_row_label(pos)} is empty")
        groups = list(frame.groupby(frame[cfg.id_column].astype(str), sort=False).groups.items())
    numeric = numeric_columns(frame, columns, source, fixes)

    ids, arrays, indexes, freqs = [], [], [], set()
    for sid, rows in groups:
        where = source if cfg.layout == "wide" else f"{source}: series {sid!r}"
        index, values, freq = _one_series(
            stamps.loc[rows], numeric.loc[rows], cfg, where, notes, fixes
        )
        ids.append(str(sid))
        arrays.append(values.to_numpy(dtype=np.float32))
        indexes.append(index)
        freqs.add(freq)
    if len(freqs) > 1:
        raise DataError(f"{source}: series have different frequencies {sorted(freqs)}; "
                        "set data.freq or split the file")
    for note in notes[1:]:
        log.info(note)
    return SeriesSet(ids, arrays, indexes, list(columns), freqs.pop(), source, notes=notes)


def season_for(freq: str) -> int:
    """Default season length for seasonal naive and MASE, from a pandas frequency."""
    offset = pd.tseries.frequencies.to_offset(freq)
    name = offset.rule_code.lower()
    n = max(offset.n, 1)
    per_unit = {"h": 24, "min": 60 * 24, "t": 60 * 24, "s": 60, "d": 7, "b": 5, "w": 52,
                "me": 12, "ms": 12, "m": 12, "qe": 4, "qs": 4, "q": 4}
    for key, steps in per_unit.items():
        if name == key or name.startswith(key + "-"):
            return max(steps // n, 1)
    return 1


def channel_mismatch(have: list[str], want: list[str]) -> str:
    """Data channels `have` against a model's `want`, in words, with the `--set` that fixes
    it (quoted for a shell)."""
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    what = "; ".join([*([f"missing {missing}"] if missing else []),
                      *([f"{extra} not in the model"] if extra else [])]) or "in another order"
    # accents as they are, but control characters escaped: YAML refuses some raw (DEL)
    listed = "".join(c if c.isprintable() else json.dumps(c)[1:-1]
                     for c in json.dumps(want, ensure_ascii=False))
    fix = "--set " + shlex.quote(f"data.columns={listed}")
    return (f"data channels {have} differ from the model's {want} ({what}); "
            + (f"score a file that holds the model's channels, with {fix}" if missing
               else f"pass {fix}"))


def check_model_data(series: SeriesSet, channels: list[str], freq: str, use: str) -> None:
    """A DataError unless `series` has a model's channels and frequency; `use` says what the
    data is for ('evaluate', 'backtest')."""
    if series.channels != channels:
        raise DataError(channel_mismatch(series.channels, channels))
    if pd.tseries.frequencies.to_offset(series.freq) != pd.tseries.frequencies.to_offset(freq):
        raise DataError(f"data frequency {series.freq!r} differs from the model's {freq!r}; "
                        f"{use} on data at the model's frequency")
