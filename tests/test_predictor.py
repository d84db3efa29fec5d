from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from forecast.bundle import META, SCALER, WEIGHTS, Bundle, BundleMeta, load_bundle, save_bundle
from forecast.config import ModelConfig
from forecast.errors import DataError, ForecastError
from forecast.model import build_model
from forecast.predictor import Forecaster

L, H = 24, 6
MEAN = np.array([20.0, -5.0])
SCALE = np.array([3.0, 0.5])


@pytest.fixture(params=[False, True], ids=["head", "head+linear_skip"])
def bundle(request) -> Bundle:
    cfg = ModelConfig(patch_len=8, patch_stride=4, d_model=8, n_heads=2, n_layers=1, d_ff=16,
                      dropout=0.0, positional="learned", linear_skip=request.param)
    torch.manual_seed(0)
    model = build_model(cfg, L, H, 2).eval()
    meta = BundleMeta(name="tiny", lookback=L, horizon=H, channels=["a", "b"], freq="h",
                      model=cfg.model_dump(mode="json"), season=24, metrics={"test_mse": 0.5})
    return Bundle(model, MEAN.copy(), SCALE.copy(), meta)


@pytest.fixture
def forecaster(bundle) -> Forecaster:
    return Forecaster(bundle)


def history(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (MEAN + SCALE * rng.standard_normal((n, 2))).astype(np.float32)


def test_bundle_round_trip_gives_identical_predictions(tmp_path, bundle, forecaster):
    umask = os.umask(0o022)
    try:
        d = save_bundle(tmp_path / "model", bundle)
    finally:
        os.umask(umask)
    assert {p.name for p in d.iterdir()} == {WEIGHTS, META, SCALER}
    # the weights were 0600 whatever the umask: unreadable to a serving user that could read
    # the JSON beside them
    assert {name: (d / name).stat().st_mode & 0o777 for name in (WEIGHTS, META, SCALER)} == {
        WEIGHTS: 0o644, META: 0o644, SCALER: 0o644}
    assert json.loads((d / SCALER).read_text()) == {"mean": MEAN.tolist(),
                                                    "scale": SCALE.tolist()}
    loaded = load_bundle(d)
    assert loaded.meta == bundle.meta
    np.testing.assert_array_equal(loaded.mean, MEAN)
    assert not loaded.model.training
    histories = [history(30, 1), history(L, 2), history(10, 3)]
    np.testing.assert_array_equal(Forecaster(loaded).predict_arrays(histories),
                                  forecaster.predict_arrays(histories))


def test_load_bundle_missing_file(tmp_path, bundle):
    d = save_bundle(tmp_path / "model", bundle)
    (d / SCALER).unlink()
    with pytest.raises(ForecastError) as err:
        load_bundle(d)
    msg = str(err.value)
    assert "is not a model directory" in msg and "scaler.json" in msg
    assert "model/ folder that `forecast train` wrote" in msg


def test_load_bundle_wrong_format_version(tmp_path, bundle):
    d = save_bundle(tmp_path / "model", bundle)
    meta = json.loads((d / META).read_text())
    meta["format_version"] = 99
    (d / META).write_text(json.dumps(meta))
    with pytest.raises(ForecastError, match=r"has model format 99, this version reads 1"):
        load_bundle(d)


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"mean": [20.0, -5.0]}', '{"mean": [20.0], "scale": [3.0]}',
    '{"mean": [20.0, -5.0], "scale": [3.0, 0.0]}', '{"mean": [20.0, NaN], "scale": [3.0, 0.5]}',
    '{"mean": ["a", -5.0], "scale": [3.0, 0.5]}', '{"mean": [20.0, -5.0], "scale": [3.0, -1]}',
], ids=["not-json", "list", "no-scale", "one-channel", "zero-scale", "nan-mean", "string",
        "negative-scale"])
def test_load_bundle_damaged_scaler_is_named(tmp_path, bundle, text):
    d = save_bundle(tmp_path / "model", bundle)
    (d / SCALER).write_text(text)
    with pytest.raises(ForecastError) as err:
        load_bundle(d)
    msg = str(err.value)
    assert "scaler.json" in msg and "each a list of 2 finite numbers" in msg
    assert "every scale > 0" in msg


def _edit_meta(d, **changes) -> None:
    meta = json.loads((d / META).read_text())
    meta.update(changes)
    (d / META).write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


@pytest.mark.parametrize(("damage", "what"), [
    (lambda d: (d / META).write_text("{not json"), "model.json is not a JSON object"),
    (lambda d: _edit_meta(d, new_key=1), "model.json does not describe a model"),
    (lambda d: _edit_meta(d, channels=None), "model.json does not describe a model"),
    (lambda d: _edit_meta(d, horizon="6"), "model.json does not describe a model"),
    (lambda d: _edit_meta(d, lookback=-5), "model.json does not describe a model"),
    (lambda d: _edit_meta(d, model={"d_model": "wide"}), "model.json does not describe a model"),
    (lambda d: (d / WEIGHTS).write_bytes(b""), "weights.safetensors does not hold this model's"),
    (lambda d: _edit_meta(d, model={**json.loads((d / META).read_text())["model"],
                                    "d_model": 16, "n_heads": 2}),  # the weights are d_model 8
     "weights.safetensors does not hold this model's"),
], ids=["json", "unknown-key", "no-channels", "text-horizon", "negative-lookback", "bad-model",
        "empty-weights", "other-width"])
def test_a_damaged_model_directory_is_one_error_naming_the_file(tmp_path, bundle, damage, what):
    d = save_bundle(tmp_path / "model", bundle)
    damage(d)
    with pytest.raises(ForecastError) as err:  # each was a traceback (TypeError, JSONDecodeError,
        load_bundle(d)  # SafetensorError, size mismatch)
    assert str(err.value).startswith(f"model directory {str(d)!r} is damaged: {what}")
    assert str(err.value).endswith("re-save the model with `forecast train`")


def test_full_history_forecast_in_original_units(bundle, forecaster):
    h = history(L)
    x = torch.from_numpy(((h - MEAN) / SCALE).astype(np.float32))[None]
    with torch.no_grad():
        expected = bundle.model(x).numpy()[0] * SCALE + MEAN
    out = forecaster.predict_arrays([h])
    assert out.shape == (1, H, 2)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_longer_history_uses_the_last_lookback_steps(forecaster):
    h = history(100)
    np.testing.assert_allclose(forecaster.predict_arrays([h]),
                               forecaster.predict_arrays([h[-L:]]), rtol=1e-6)


def test_short_history_is_left_padded_and_masked(bundle, forecaster):
    n = 10  # >= min_history (= patch_len 8)
    h = history(n)
    x = np.zeros((1, L, 2), dtype=np.float32)
    x[0, L - n:] = (h - MEAN) / SCALE
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[0, : L - n] = True
    with torch.no_grad():
        expected = bundle.model(torch.from_numpy(x), mask).numpy()[0] * SCALE + MEAN
    np.testing.assert_allclose(forecaster.predict_arrays([h])[0], expected, rtol=1e-5,
                               atol=1e-5)
    # Batched with a full history, each row is forecast as if alone.
    full = history(L, 5)
    both = forecaster.predict_arrays([h, full])
    np.testing.assert_allclose(both[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], forecaster.predict_arrays([full])[0], rtol=1e-5,
                               atol=1e-5)
    # Exactly min_history steps is accepted.
    assert forecaster.predict_arrays([history(8)]).shape == (1, H, 2)


def test_history_shorter_than_min_history_is_rejected(forecaster):
    with pytest.raises(DataError) as err:
        forecaster.predict_arrays([history(7)], ids=["shop-1"])
    msg = str(err.value)
    assert "series 'shop-1'" in msg
    assert "7 steps of history; the model needs at least 8 (lookback 24)" in msg


def test_nan_history_is_rejected(forecaster):
    h = history(L)
    h[3, 1] = np.nan
    with pytest.raises(DataError, match=r"history holds NaN or infinite values"):
        forecaster.predict_arrays([h])


def test_forecast_that_overflows_float32_is_an_error_not_nan(forecaster):
    # 3e38 fits float32, but the window's variance does not: NaN must not reach a CSV or JSON
    ok, big = history(L), history(L)
    big[-1, 0] = 3e38
    with pytest.raises(DataError, match=r"series 'b': the forecast overflowed float32 "
                                        r"\(largest \|history value\| 3e\+38\)"):
        forecaster.predict_arrays([ok, big], ids=["a", "b"])


def test_wrong_channel_count_is_rejected(forecaster):
    with pytest.raises(DataError, match=r"expected \[steps x 2\] values, got shape \(24, 3\)"):
        forecaster.predict_arrays([np.zeros((L, 3), dtype=np.float32)])


@pytest.mark.parametrize("h", [0, H + 1])
def test_horizon_out_of_range_is_rejected(forecaster, h):
    with pytest.raises(DataError, match=rf"horizon must be between 1 and {H}, got {h}"):
        forecaster.predict_arrays([history(L)], horizon=h)


def test_shorter_horizon_is_a_prefix(forecaster):
    hist = [history(L)]
    full = forecaster.predict_arrays(hist)
    part = forecaster.predict_arrays(hist, horizon=2)
    assert part.shape == (1, 2, 2)
    np.testing.assert_array_equal(part, full[:, :2])


def frame_for(values: np.ndarray, start: str | None, sid: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"a": values[:, 0], "b": values[:, 1]})
    if start is not None:
        frame.insert(0, "date", pd.date_range(start, periods=len(values), freq="h"))
    if sid is not None:
        frame.insert(0, "series_id", sid)
    return frame


def test_predict_frame_without_timestamps(forecaster):
    h = history(30)
    out = forecaster.predict_frame(frame_for(h, None))
    assert list(out.columns) == ["series_id", "step", "a", "b"]
    assert out["series_id"].tolist() == ["series"] * H
    assert out["step"].tolist() == list(range(1, H + 1))
    expected = forecaster.predict_arrays([h])[0]
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), expected, rtol=1e-6)


def test_predict_frame_with_timestamps(forecaster):
    h = history(30)
    out = forecaster.predict_frame(frame_for(h, "2024-03-01 00:00"), horizon=3)
    assert list(out.columns) == ["series_id", "step", "date", "a", "b"]
    # the history ends at 05:00 the next day (30 hourly rows); the forecast follows it
    assert list(out["date"]) == list(pd.date_range("2024-03-02 06:00", periods=3, freq="h"))
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(),
                               forecaster.predict_arrays([h], horizon=3)[0], rtol=1e-6)


def test_predict_frame_with_utc_offsets_says_utc(forecaster):
    h = history(30)
    frame = frame_for(h, "2024-03-01 00:00")
    frame["date"] = [f"{t:%Y-%m-%d %H:%M}+09:00" for t in frame["date"]]  # Tokyo time
    out = forecaster.predict_frame(frame, horizon=3)
    # the history ends at 05:00+09:00 = 20:00 UTC; it was written 21:00 with no zone, which
    # reads as Tokyo time nine hours late
    assert list(out["date"]) == list(pd.date_range("2024-03-01 21:00", periods=3, freq="h",
                                                   tz="UTC"))


def test_predict_frame_sorts_rows_by_timestamp(forecaster):
    h = history(30)
    frame = frame_for(h, "2024-03-01")
    shuffled = frame.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(forecaster.predict_frame(shuffled),
                                  forecaster.predict_frame(frame))


def test_predict_frame_several_series(forecaster):
    h1, h2 = history(30, 1), history(12, 2)
    frame = pd.concat([frame_for(h1, "2024-03-01", "north"),
                       frame_for(h2, "2024-05-01 12:00", "south")], ignore_index=True)
    out = forecaster.predict_frame(frame)
    assert list(out.columns) == ["series_id", "step", "date", "a", "b"]
    assert out["series_id"].tolist() == ["north"] * H + ["south"] * H
    assert out["step"].tolist() == list(range(1, H + 1)) * 2
    south = out[out["series_id"] == "south"]
    assert list(south["date"]) == list(pd.date_range("2024-05-02 00:00", periods=H, freq="h"))
    expected = forecaster.predict_arrays([h1, h2])
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), expected.reshape(-1, 2), rtol=1e-5,
                               atol=1e-5)
    # Without timestamps, series_id alone groups the rows.
    no_time = forecaster.predict_frame(frame.drop(columns="date"))
    assert list(no_time.columns) == ["series_id", "step", "a", "b"]
    np.testing.assert_allclose(no_time[["a", "b"]].to_numpy(), expected.reshape(-1, 2),
                               rtol=1e-5, atol=1e-5)


def test_predict_frame_concatenated_series(forecaster):
    # pd.concat without ignore_index repeats row labels; each series keeps its own rows.
    h1, h2 = history(30, 1), history(30, 2)
    frame = pd.concat([frame_for(h1, "2024-03-01", "n"), frame_for(h2, "2024-03-01", "s")])
    expected = forecaster.predict_arrays([h1, h2]).reshape(-1, 2)
    for f in (frame, frame.drop(columns="date")):
        out = forecaster.predict_frame(f)
        assert out["series_id"].tolist() == ["n"] * H + ["s"] * H
        np.testing.assert_allclose(out[["a", "b"]].to_numpy(), expected, rtol=1e-5, atol=1e-5)


def test_predict_frame_non_numeric_value_is_a_data_error(forecaster):
    frame = frame_for(history(30), None).astype({"b": object})
    frame.loc[7, "b"] = "oops"
    with pytest.raises(DataError, match=r"column 'b' is not numeric: row 8 has 'oops'"):
        forecaster.predict_frame(frame)


def test_predict_frame_missing_channel(forecaster):
    with pytest.raises(DataError, match=r"column\(s\) \['b'\] missing; the model needs"):
        forecaster.predict_frame(pd.DataFrame({"a": np.zeros(L)}))


def test_predict_frame_gap_in_history_is_an_error(forecaster):
    frame = frame_for(history(30), "2024-03-01").drop(index=[10])
    with pytest.raises(DataError, match=r"1 missing time step\(s\) at frequency 'h'") as err:
        forecaster.predict_frame(frame)
    # a history has no data settings to change: the fix is to the history itself
    assert str(err.value).endswith("; send every step of the history (a forecast fills no gaps)")


@pytest.mark.parametrize(("change", "fix"), [
    (lambda f: f.assign(b=f["b"].where(f.index != 7)),
     "; send a value for every step (a forecast fills no gaps)"),
    (lambda f: f.astype({"b": object}).assign(b=lambda g: g["b"].where(g.index != 7, "oops")),
     "; fix the value"),
    (lambda f: f.drop(columns="b"), "; send a column for each of the model's channels"),
    (lambda f: f.assign(date=f.index.to_numpy() * 3600),
     "; write them as ISO 8601 (2024-01-31 13:00)"),
])
def test_history_errors_name_a_fix_to_the_history_not_to_data_settings(forecaster, change, fix):
    with pytest.raises(DataError) as err:
        forecaster.predict_frame(change(frame_for(history(30), "2024-03-01")))
    assert str(err.value).endswith(fix) and "data." not in str(err.value)


def long_history(lengths: list[int], freq: str = "h", unit: str = "us") -> pd.DataFrame:
    """Contiguous, time-sorted series with their own start times, as batch jobs hand them on."""
    parts = []
    for i, n in enumerate(lengths):
        stamps = pd.date_range(pd.Timestamp("2024-01-01") + pd.Timedelta(hours=5 * i),
                               periods=n, freq=freq).as_unit(unit)
        values = history(n, seed=i).astype(np.float64)  # as files are read
        parts.append(pd.DataFrame({"series_id": f"s{i}", "date": stamps,
                                   "a": values[:, 0], "b": values[:, 1]}))
    return pd.concat(parts, ignore_index=True)


def test_regular_histories_equal_the_checked_ones(forecaster):
    frame = long_history([30, 8, 24, 61])
    ids, values, last = forecaster.regular_histories(frame)
    want_ids, want_values, want_stamps = forecaster.histories(frame)
    assert ids == want_ids
    for got, want in zip(values, want_values, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert list(last) == [s[-1] for s in want_stamps]


@pytest.mark.parametrize("spoil", ["gap", "duplicate", "unsorted", "nan", "inf", "huge", "short",
                                   "not contiguous", "text time"])
def test_regular_histories_leave_every_irregular_frame_to_the_checks(forecaster, spoil):
    frame = long_history([30, 12, 24])
    i = 35  # the second series' sixth row
    if spoil == "gap":
        frame = frame.drop(index=i)
    elif spoil == "duplicate":
        frame.loc[i, "date"] = frame.loc[i - 1, "date"]
    elif spoil == "unsorted":
        frame.iloc[[i, i + 1]] = frame.iloc[[i + 1, i]].to_numpy()
    elif spoil in ("nan", "inf", "huge"):
        frame.loc[i, "a"] = {"nan": np.nan, "inf": np.inf, "huge": 1e39}[spoil]
    elif spoil == "short":
        frame = frame[frame.series_id != "s1"].pipe(
            lambda f: pd.concat([f, long_history([7]).assign(series_id="s9")]))
    elif spoil == "not contiguous":
        frame = pd.concat([frame, long_history([10])], ignore_index=True)  # s0 again
    else:
        frame["date"] = frame["date"].astype(str)
    assert forecaster.regular_histories(frame.reset_index(drop=True)) is None


def test_regular_histories_leave_calendar_frequencies_to_the_checks(bundle):
    bundle.meta.freq = "MS"
    frame = long_history([30], freq="MS")
    assert Forecaster(bundle).regular_histories(frame) is None


@pytest.mark.parametrize("freq", ["h", "15min", "D", "MS", "W-SUN"])
@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_future_stamps_equal_the_calendar_per_series(bundle, freq, unit):
    bundle.meta.freq = freq
    forecaster = Forecaster(bundle)
    starts = ["2024-01-07 00:00", "2024-02-04 00:00", "2024-12-29 00:00"]
    last = pd.DatetimeIndex([pd.date_range(s, periods=3, freq=freq)[-1] for s in starts]
                            ).as_unit(unit)
    got = forecaster.future_stamps(last, 5)
    want = pd.DatetimeIndex(np.concatenate([forecaster.future_index(t, 5) for t in last]))
    assert got.unit == unit
    assert list(got) == list(want)
