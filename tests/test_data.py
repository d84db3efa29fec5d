from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest

from forecast.config import DataConfig
from forecast.data import frame_to_series, load_series, read_table, season_for
from forecast.errors import DataError


def hourly(n: int, start: str = "2024-01-01") -> list[str]:
    return [str(t) for t in pd.date_range(start, periods=n, freq="h")]


def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "date": hourly(6),
        "a": [0.0, 10.0, 20.0, 30.0, 40.0, 50.0],
        "b": [1.0, 1.0, 2.0, 3.0, 5.0, 8.0],
    })


def load(frame: pd.DataFrame, **cfg):
    return frame_to_series(frame, DataConfig(**cfg), source="f.csv")


# --- reading files ---------------------------------------------------------------------------

def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("date,a,a\n2024-01-01 00:00,1,2\n")
    with pytest.raises(DataError, match=r"the header names \['a'\] more than once"):
        read_table(path)  # pandas renamed the second to 'a.1', a channel of its own


def test_missing_file(tmp_path):
    path = tmp_path / "missing.csv"
    with pytest.raises(DataError) as err:
        load_series(DataConfig(path=str(path)))
    assert str(path) in str(err.value)
    assert "not found; check data.path or --data" in str(err.value)
    assert err.value.exit_code == 3


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("date,a\n")
    with pytest.raises(DataError, match=r"has suffix '\.xlsx'; use \.csv, \.parquet or \.pq"):
        read_table(path)


def test_data_path_not_set():
    with pytest.raises(DataError, match=r"data.path is not set; pass --data FILE"):
        load_series(DataConfig())


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("date,a\n")
    with pytest.raises(DataError, match=r"has no rows"):
        read_table(path)


def test_csv_load_names_source_and_digest(tmp_path, wide_frame):
    path = tmp_path / "s.csv"
    wide_frame.to_csv(path, index=False)
    series = load_series(DataConfig(path=str(path)))
    assert series.source == str(path)
    assert series.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert series.channels == ["a", "b"]
    assert series.values[0].shape == (len(wide_frame), 2)
    assert series.values[0].dtype == np.float32


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_round_trip(tmp_path, wide_frame, suffix):
    path = tmp_path / f"s{suffix}"
    wide_frame.to_parquet(path, index=False)
    series = load_series(DataConfig(path=str(path)))
    expected = wide_frame[["a", "b"]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(series.values[0], expected)
    assert series.timestamps[0].equals(pd.DatetimeIndex(wide_frame["date"]))
    assert series.freq == "h"


# --- column and value checks -----------------------------------------------------------------

def test_missing_timestamp_column():
    frame = small_frame().rename(columns={"date": "time"})
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "timestamp column 'date' not found" in msg
    assert "['time', 'a', 'b']" in msg
    assert "set data.timestamp_column" in msg


def test_unparsable_timestamp_names_row():
    frame = small_frame()
    frame.loc[3, "date"] = "yesterday-ish"
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "column 'date' row 4 has 'yesterday-ish', which is not a timestamp" in msg
    assert "fix the value or drop the row" in msg


def test_missing_value_column():
    with pytest.raises(DataError) as err:
        load(small_frame(), columns=["a", "c"])
    msg = str(err.value)
    assert "column(s) ['c'] not found" in msg and "set data.columns" in msg


def test_non_numeric_column_names_column_and_row():
    frame = small_frame()
    frame["b"] = frame["b"].astype(object)
    frame.loc[4, "b"] = "n/a?"
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "column 'b' is not numeric: row 5 has 'n/a?'" in msg
    assert "leave 'b' out of data.columns" in msg


def test_boolean_column_rejected():
    frame = small_frame()
    frame["flag"] = [True, False] * 3
    with pytest.raises(DataError, match=r"column 'flag' is boolean"):
        load(frame)


def test_day_first_dates_are_read_with_one_format_for_the_column():
    # pandas' per-value parsing read 02/01/2024 as 1 February and 13/01/2024 as 13 January
    stamps = pd.date_range("2024-01-10", periods=6, freq="D")
    frame = small_frame().assign(date=[t.strftime("%d/%m/%Y %H:%M") for t in stamps])
    series = load(frame, freq="D")
    assert list(series.timestamps[0]) == list(stamps)


def test_a_day_first_column_loads_without_a_pandas_warning():
    stamps = pd.date_range("2024-01-13", periods=6, freq="D")  # 13/01: only day-first reads it
    frame = small_frame().assign(date=[t.strftime("%d/%m/%Y %H:%M") for t in stamps])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = load(frame, freq="D")
    assert [str(w.message) for w in caught] == []  # pandas warned of dayfirst on every such file
    assert list(series.timestamps[0]) == list(stamps)


def test_dates_whose_day_and_month_cannot_be_told_apart_are_refused():
    frame = small_frame().assign(date=[f"0{d}/01/2024" for d in range(1, 7)])  # all days <= 12
    with pytest.raises(DataError) as err:
        load(frame)
    assert "column 'date' reads as '%m/%d/%Y' and as '%d/%m/%Y'" in str(err.value)
    assert "ISO 8601" in str(err.value)


def test_other_timestamp_forms_still_parse_and_the_bad_row_is_named():
    # no format can be guessed from "1/10/2024 1:00 PM": parsed value by value, as before
    frame = small_frame().assign(date=[f"1/10/2024 {h}:00 PM" for h in range(1, 7)])
    assert load(frame).timestamps[0][0] == pd.Timestamp("2024-01-10 13:00")
    # day-first reads more rows than month-first: the row neither reads is the one named
    frame = small_frame().assign(date=["10/01/2024", "13/01/2024", "garbage", "15/01/2024",
                                       "16/01/2024", "17/01/2024"])
    with pytest.raises(DataError, match="row 3 has 'garbage', which is not a timestamp"):
        load(frame)


@pytest.mark.parametrize("values", [[20240101 + d for d in range(6)],
                                    [1704067200.0 + 3600 * h for h in range(6)]])
def test_a_numeric_timestamp_column_is_refused(values):
    # read as nanoseconds after 1970, it trained at frequency 'ns'
    with pytest.raises(DataError) as err:
        load(small_frame().assign(date=values))
    assert f"timestamp column 'date' holds numbers ({values[0]!r}, ...)" in str(err.value)


@pytest.mark.parametrize("column", [
    pd.Series([None, *range(20240102, 20240107)], dtype="Int64"),  # first value missing
    pd.Series(range(20240101, 20240107), dtype="int64[pyarrow]"),  # from a Parquet file
], ids=["nullable", "arrow"])
def test_numeric_timestamps_of_any_integer_dtype_are_refused_in_one_line(column):
    with pytest.raises(DataError) as err:  # `.item()` on pd.NA or an int was an AttributeError
        load(small_frame().assign(date=column))
    assert "timestamp column 'date' holds numbers (2024010" in str(err.value)


def test_an_empty_timestamp_column_names_its_first_row():
    with pytest.raises(DataError) as err:  # it said "row 1 has np.float64(nan)"
        load(small_frame().assign(date=[float("nan")] * 6))
    assert "column 'date' row 1 has an empty value, which is not a timestamp" in str(err.value)


def test_duplicate_timestamp_names_the_first_duplicate():
    frame = small_frame()
    frame.loc[2, "date"] = frame.loc[1, "date"]
    frame.loc[4, "date"] = frame.loc[3, "date"]
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "duplicate timestamp 2024-01-01 01:00:00 (2 duplicates in all)" in msg
    assert "keep one row per timestamp" in msg


def test_nan_with_policy_error_says_default_and_fix():
    frame = small_frame()
    frame.loc[2, "b"] = np.nan
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "column 'b' is missing a value at 2024-01-01 02:00:00" in msg
    assert "data.missing is 'error' (the default)" in msg
    assert "'interpolate' or 'ffill'" in msg


def test_nan_is_filled_with_interpolate():
    frame = small_frame()
    frame.loc[2, "a"] = np.nan  # between 10 and 30
    series = load(frame, missing="interpolate")
    assert series.values[0][2, 0] == pytest.approx(20.0)


def test_infinite_value_names_column_and_row():
    frame = small_frame()
    frame.loc[1, "a"] = np.inf
    with pytest.raises(DataError) as err:
        load(frame)
    msg = str(err.value)
    assert "column 'a' row 2 is infinite" in msg and "finite value" in msg


def test_value_beyond_float32_names_column_and_row():
    # finite in float64, infinite in the float32 the model computes in: it used to train and
    # fail with "loss became nan ... lower train.lr"
    frame = small_frame()
    frame.loc[3, "a"] = -1e39
    with pytest.raises(DataError) as err:
        load(frame)
    assert "column 'a' row 4 is -1e+39, beyond float32's range" in str(err.value)


def test_unsorted_rows_are_sorted_with_a_note():
    frame = small_frame().iloc[[3, 0, 5, 1, 2, 4]].reset_index(drop=True)
    series = load(frame)
    np.testing.assert_array_equal(series.values[0][:, 0], [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(series.values[0][:, 1], [1, 1, 2, 3, 5, 8])
    assert series.timestamps[0].is_monotonic_increasing
    assert any("not in time order; sorted them" in n for n in series.notes)


def test_sorted_rows_have_no_sorting_note():
    assert not any("sorted" in n for n in load(small_frame()).notes)


# --- gaps and frequency ----------------------------------------------------------------------

def gapped() -> pd.DataFrame:
    # Rows 02:00 and 03:00 are absent.
    return small_frame().drop(index=[2, 3]).reset_index(drop=True)


def test_gap_with_policy_error_names_the_first_gap():
    with pytest.raises(DataError) as err:
        load(gapped())
    msg = str(err.value)
    assert "2 missing time step(s) at frequency 'h', the first at 2024-01-01 02:00:00" in msg
    assert "data.missing is 'error' (the default)" in msg and "'interpolate'" in msg


def test_gap_filled_by_interpolation():
    series = load(gapped(), missing="interpolate")
    # a: 10 at 01:00, 40 at 04:00 → 20, 30; b: 1 at 01:00, 5 at 04:00 → 7/3, 11/3
    np.testing.assert_allclose(series.values[0][:, 0], [0, 10, 20, 30, 40, 50], rtol=1e-6)
    np.testing.assert_allclose(series.values[0][:, 1], [1, 1, 7 / 3, 11 / 3, 5, 8], rtol=1e-6)
    assert len(series.timestamps[0]) == 6 and series.freq == "h"
    assert any("filled 2 missing time step(s) (interpolate)" in n for n in series.notes)


def test_gap_filled_forward():
    series = load(gapped(), missing="ffill")
    np.testing.assert_array_equal(series.values[0][:, 0], [0, 10, 10, 10, 40, 50])
    np.testing.assert_array_equal(series.values[0][:, 1], [1, 1, 1, 1, 5, 8])


def test_off_grid_timestamp():
    frame = small_frame()
    frame.loc[3, "date"] = "2024-01-01 03:30:00"
    with pytest.raises(DataError, match=r"timestamp 2024-01-01 03:30:00 is off the 'h' grid"):
        load(frame, freq="h")


def test_frequency_inferred():
    assert load(small_frame()).freq == "h"
    daily = small_frame().assign(date=[str(d.date()) for d in pd.date_range(
        "2024-03-01", periods=6, freq="D")])
    assert load(daily).freq == "D"


def test_frequency_given():
    frame = small_frame().assign(date=[str(t) for t in pd.date_range(
        "2024-01-01", periods=6, freq="15min")])
    series = load(frame, freq="15min")
    assert series.freq == "15min"
    assert series.timestamps[0][1] - series.timestamps[0][0] == pd.Timedelta("15min")


@pytest.mark.parametrize("freq", ["fortnightly", "0h", "-1h"])
def test_bad_frequency_given(freq):
    with pytest.raises(DataError, match=rf"data.freq '{freq}' is not a positive pandas frequency"):
        load(small_frame(), freq=freq)


def test_timezone_aware_stamps_become_utc():
    frame = small_frame().assign(date=[f"{t}+02:00" for t in hourly(6)])
    series = load(frame)
    assert series.timestamps[0][0] == pd.Timestamp("2023-12-31 22:00:00")
    assert series.timestamps[0].tz is None


def test_stamps_across_a_daylight_saving_switch_parse_as_utc():
    # Berlin's offset changes from +01:00 to +02:00 at 2024-03-31 02:00 local: the column
    # mixes offsets, which pandas refuses to parse unless told to convert to UTC
    local = pd.date_range("2024-03-31", periods=6, freq="h", tz="Europe/Berlin")
    assert {t.utcoffset() for t in local} == {pd.Timedelta(hours=1), pd.Timedelta(hours=2)}
    series = load(small_frame().assign(date=[t.isoformat() for t in local]))
    assert list(series.timestamps[0]) == list(pd.date_range("2024-03-30 23:00", periods=6,
                                                            freq="h"))


# --- long layout -----------------------------------------------------------------------------

def long_frame() -> pd.DataFrame:
    s1 = pd.DataFrame({"series_id": "s1", "date": hourly(5), "value": [1.0, 2, 3, 4, 5]})
    s2 = pd.DataFrame({"series_id": "s2", "date": hourly(4, "2024-02-01"),
                       "value": [10.0, 20, 30, 40]})
    # Interleave the two series, and put s2's rows out of order.
    frame = pd.concat([s1, s2.iloc[::-1]]).iloc[[0, 5, 1, 6, 2, 7, 3, 8, 4]]
    return frame.reset_index(drop=True)


def test_long_layout_two_series():
    series = load(long_frame(), layout="long")
    assert series.ids == ["s1", "s2"]
    assert series.channels == ["value"]
    np.testing.assert_array_equal(series.values[0][:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(series.values[1][:, 0], [10, 20, 30, 40])
    assert series.timestamps[1][0] == pd.Timestamp("2024-02-01 00:00")
    assert series.n_rows == 9
    assert any("series 's2'" in n and "sorted" in n for n in series.notes)


def test_long_layout_from_concatenated_frames():
    # pd.concat keeps each part's index, so row labels repeat across series.
    s1 = pd.DataFrame({"series_id": "s1", "date": hourly(3), "value": [1.0, 2, 3]})
    s2 = pd.DataFrame({"series_id": "s2", "date": hourly(3), "value": [7.0, 8, 9]})
    series = load(pd.concat([s1, s2]), layout="long")
    assert series.ids == ["s1", "s2"]
    np.testing.assert_array_equal(series.values[0][:, 0], [1, 2, 3])
    np.testing.assert_array_equal(series.values[1][:, 0], [7, 8, 9])


def test_long_layout_errors_name_the_series():
    frame = long_frame()
    frame.loc[frame["date"] == "2024-02-01 02:00:00", "date"] = "2024-02-01 01:00:00"
    with pytest.raises(DataError, match=r"series 's2': duplicate timestamp 2024-02-01 01:00:00"):
        load(frame, layout="long")


def test_long_layout_missing_id_column():
    with pytest.raises(DataError, match=r"id column 'series_id' not found .*set data.id_column"):
        load(long_frame().drop(columns="series_id"), layout="long")


def test_long_layout_series_with_different_frequencies():
    frame = long_frame()
    frame.loc[frame["series_id"] == "s2", "date"] = [
        str(t) for t in pd.date_range("2024-02-01", periods=4, freq="D")][::-1]
    with pytest.raises(DataError, match=r"series have different frequencies"):
        load(frame, layout="long")


# --- season ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("freq", "season"), [("h", 24), ("D", 7), ("15min", 96), ("2h", 12),
                                              ("W", 52), ("B", 5)])
def test_season_for(freq, season):
    assert season_for(freq) == season


def test_a_time_column_of_lists_is_named_not_a_traceback() -> None:
    # Parquet can hold a list per cell; pd.isna of a list is an array, whose truth value raised
    frame = pd.DataFrame({"date": [[1, 2]] * 5, "a": range(5)})
    with pytest.raises(DataError, match=r"column 'date' row 1 has \[1, 2\], which is not a "
                       r"timestamp"):
        frame_to_series(frame, DataConfig(columns=["a"]))
