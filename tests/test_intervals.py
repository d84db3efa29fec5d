"""Split-conformal intervals: the ranks, calibration on validation windows, quantiles that
never cross at any level, their storage in the bundle, and the CLI's --quantiles / --levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecast.bundle import Bundle, BundleMeta, load_bundle, save_bundle
from forecast.config import Config
from forecast.errors import ConfigError, DataError, ForecastError
from forecast.intervals import (
    CALIBRATION,
    GRID,
    MIN_SPREAD,
    Calibration,
    calibrate,
    conformal_ranks,
    interval_quantiles,
    interval_scores,
    parse_levels,
)
from forecast.model import build_model
from forecast.predictor import Forecaster
from forecast.windows import Prepared


@pytest.fixture
def model(tiny_prepared: Prepared, tiny_config: Config) -> torch.nn.Module:
    # any model: conformal coverage holds whatever the forecasts are
    torch.manual_seed(0)
    return build_model(tiny_config.model, tiny_prepared.lookback, tiny_prepared.horizon,
                       tiny_prepared.n_channels).eval()


@pytest.fixture
def calibration(model: torch.nn.Module, tiny_prepared: Prepared) -> Calibration:
    return calibrate(model, tiny_prepared.windows("val"))


def test_conformal_ranks_round_away_from_the_median() -> None:
    ranks = conformal_ranks(9, np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]))
    # (n + 1) q = 0.5, 1, 2.5, 5, 7.5, 9, 9.5: floor below the median, ceiling above
    assert ranks.tolist() == [0, 1, 2, 5, 8, 9, 10]


def test_intervals_cover_the_windows_they_were_calibrated_on(
        model: torch.nn.Module, calibration: Calibration, tiny_prepared: Prepared) -> None:
    val = tiny_prepared.windows("val")
    assert calibration.windows == len(val)
    scores = interval_scores(model, calibration, val).overall
    n = len(val)
    # each step and channel holds at least its conformal share of the windows
    assert 0.8 - 1e-9 <= scores["coverage_80"] <= 0.8 + 3 / n + 0.01, (scores, n)
    # 35 windows cannot give 95% (ranks 0 and 36 of 35): left out, not an error, and MSIS,
    # which scores the 95% interval, with it; 0.1 ... 0.9 they give, and with them WQL
    assert n < 39 and set(scores) == {"coverage_80", "interval_width_80", "wql"}
    wider = interval_scores(model, calibration, val, coverages=(0.5, 0.8)).overall
    assert 0 < wider["interval_width_50"] < wider["interval_width_80"]


def test_quantiles_never_cross_and_interpolate_between_grid_levels(
        calibration: Calibration) -> None:
    levels = np.linspace(calibration.levels[0], calibration.levels[-1], 57)
    q = calibration.score_quantiles(levels)
    assert (np.diff(q, axis=0) >= 0).all()
    i = len(calibration.levels) // 2
    on_grid = calibration.score_quantiles([calibration.levels[i], calibration.levels[i + 1]])
    np.testing.assert_array_equal(on_grid, calibration.scores[i:i + 2])
    middle = calibration.score_quantiles([(calibration.levels[i] + calibration.levels[i + 1]) / 2])
    np.testing.assert_allclose(middle[0], calibration.scores[i:i + 2].mean(axis=0), rtol=1e-6)


def test_a_level_the_calibration_cannot_give_is_refused_by_name(
        calibration: Calibration) -> None:
    with pytest.raises(ConfigError, match=r"^levels field: 0.999 is outside 0.0\d+\.\.0.9\d+"):
        calibration.score_quantiles([0.5, 0.999], "levels field")
    assert calibration.levels[0] >= GRID[0] and calibration.levels[-1] <= GRID[-1]


@pytest.mark.parametrize(("text", "percent", "message"), [
    ("0.1,abc", False, "'abc' is not a number"),
    ("0,0.5", False, "0 is not between 0 and 1"),
    ("80,100", True, "100 is not between 0 and 100"),
    ("nan", False, "nan is not between"),
])
def test_bad_levels_are_refused_naming_the_field(text: str, percent: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^--field: {message}"):
        parse_levels(text, "--field", percent)


def test_levels_read_as_sorted_unique_shares() -> None:
    assert parse_levels("95, 80,80", "--levels", percent=True) == [0.8, 0.95]
    assert interval_quantiles([0.8, 0.95]) == [0.025, 0.1, 0.9, 0.975]


def bundle_for(model: torch.nn.Module, prepared: Prepared, config: Config,
               calibration: Calibration | None) -> Bundle:
    meta = BundleMeta(name="tiny", lookback=prepared.lookback, horizon=prepared.horizon,
                      channels=prepared.series.channels, freq="h",
                      model=config.model.model_dump(mode="json"))
    return Bundle(model, prepared.scaler.mean, prepared.scaler.scale, meta, calibration)


def test_a_saved_model_gives_the_same_quantiles_and_they_never_cross(
        tmp_path, model, calibration, tiny_prepared, tiny_config) -> None:
    saved = bundle_for(model, tiny_prepared, tiny_config, calibration)
    save_bundle(tmp_path, saved)
    loaded = load_bundle(tmp_path)
    history = tiny_prepared.series.values[0][-tiny_prepared.lookback:]
    levels = [0.05, 0.1, 0.5, 0.9, 0.95]
    point, bands = Forecaster(saved).predict_quantiles([history], levels)
    point2, bands2 = Forecaster(loaded).predict_quantiles([history], levels)
    np.testing.assert_array_equal(bands, bands2)
    np.testing.assert_array_equal(point, point2)
    assert bands.shape == (1, tiny_prepared.horizon, tiny_prepared.n_channels, 5)
    assert (np.diff(bands, axis=-1) >= 0).all()
    # a history ten times as volatile around the same level gets bands ten times as wide
    wild = history.mean(axis=0) + 10 * (history - history.mean(axis=0))
    assert np.all(np.diff(Forecaster(saved).predict_quantiles([wild], [0.1, 0.9])[1], axis=-1)
                  > 5 * np.diff(bands[..., [1, 3]], axis=-1))


def test_a_model_without_calibration_forecasts_but_refuses_quantiles(
        tmp_path, model, tiny_prepared, tiny_config) -> None:
    save_bundle(tmp_path, bundle_for(model, tiny_prepared, tiny_config, None))
    forecaster = Forecaster(load_bundle(tmp_path))
    history = tiny_prepared.series.values[0][-tiny_prepared.lookback:]
    assert forecaster.predict_arrays([history]).shape[0] == 1
    with pytest.raises(DataError, match="^--quantiles: this model was saved without interval"):
        forecaster.predict_quantiles([history], [0.5], field="--quantiles")


def test_a_damaged_calibration_file_names_the_fix(
        tmp_path, model, calibration, tiny_prepared, tiny_config) -> None:
    save_bundle(tmp_path, bundle_for(model, tiny_prepared, tiny_config, calibration))
    (tmp_path / CALIBRATION).write_bytes(b"not a safetensors file")
    with pytest.raises(ForecastError, match="re-save the model with `forecast train`"):
        load_bundle(tmp_path)
    crossing = Calibration(calibration.levels, calibration.scores[::-1].copy(),
                           calibration.windows)
    save_bundle(tmp_path, bundle_for(model, tiny_prepared, tiny_config, crossing))
    with pytest.raises(ForecastError, match="nondecreasing scores"):
        load_bundle(tmp_path)


def test_wql_and_msis_follow_their_definitions(model: torch.nn.Module,
                                               tiny_prepared: Prepared) -> None:
    # a calibration with levels every percent, so that 0.1 ... 0.9 and 95% can all be given
    levels = np.round(np.arange(1, 100) / 100, 2)
    H, C = tiny_prepared.horizon, tiny_prepared.n_channels
    rng = np.random.default_rng(0)
    scores = np.sort(rng.normal(size=(99, H, C)), axis=0).astype(np.float32)
    cal = Calibration(levels, scores, 500)
    test = tiny_prepared.windows("test")
    mean, scale = np.array([3.0, -1.0, 0.5])[:C], np.array([2.0, 0.5, 4.0])[:C]
    scored = interval_scores(model, cal, test, season=4, mean=mean, scale=scale)
    got = scored.overall

    x, y = (t.numpy() for t in test.gather(torch.arange(len(test))))
    with torch.inference_mode():
        pred = model.eval()(torch.from_numpy(x)).numpy()
    s = np.maximum(x.std(axis=1), MIN_SPREAD)[:, None, :]
    actual = y * scale + mean
    losses = []
    for q in np.round(np.arange(1, 10) / 10, 1):
        quantile = (pred + s * cal.score_quantiles([q])[0]) * scale + mean
        miss = actual - quantile
        losses.append(2 * np.maximum(q * miss, (q - 1) * miss).sum() / np.abs(actual).sum())
    assert got["wql"] == pytest.approx(np.mean(losses), rel=1e-4)
    low, high = cal.score_quantiles([0.025, 0.975])
    lower, upper = pred + s * low, pred + s * high
    score = (upper - lower) + 40 * (np.maximum(lower - y, 0) + np.maximum(y - upper, 0))
    naive = np.maximum(np.abs(x[:, 4:] - x[:, :-4]).mean(axis=1), MIN_SPREAD)
    assert got["msis_95"] == pytest.approx((score.mean(axis=1) / naive).mean(), rel=1e-4)
    # per horizon step: the share inside the 95% interval and WQL over windows and channels
    inside = ((y >= lower) & (y <= upper)).mean(axis=(0, 2))
    np.testing.assert_allclose(scored.per_step["coverage_95"], inside, rtol=1e-6)
    assert len(set(inside.round(6))) > 1  # the steps differ, so a mixed-up axis would show
    step_wql = [np.mean([2 * np.maximum(q * m, (q - 1) * m)[:, h].sum()
                         / np.abs(actual[:, h]).sum() for q, m in zip(
                             np.round(np.arange(1, 10) / 10, 1),
                             [actual - (pred + s * cal.score_quantiles([q])[0]) * scale - mean
                              for q in np.round(np.arange(1, 10) / 10, 1)], strict=True)])
                for h in range(H)]
    np.testing.assert_allclose(scored.per_step["wql"], step_wql, rtol=1e-4)


def test_wql_and_msis_are_left_out_when_the_calibration_cannot_give_them(
        model: torch.nn.Module, tiny_prepared: Prepared) -> None:
    levels = np.array([0.3, 0.5, 0.7])  # too few validation windows for 0.1 or 95%
    H, C = tiny_prepared.horizon, tiny_prepared.n_channels
    cal = Calibration(levels, np.stack([np.full((H, C), v, np.float32) for v in (-1, 0, 1)]),
                      5)
    got = interval_scores(model, cal, tiny_prepared.windows("test")).overall
    assert "wql" not in got and "msis_95" not in got


def test_a_baseline_gets_intervals_of_its_own(tiny_prepared: Prepared) -> None:
    from forecast.baselines import seasonal_naive

    H = tiny_prepared.horizon
    def repeat(x: torch.Tensor) -> torch.Tensor:
        return seasonal_naive(x, H, 4)

    val = tiny_prepared.windows("val")
    calibration = calibrate(repeat, val)
    scores = interval_scores(repeat, calibration, val, season=4).overall
    # calibrated on these very windows: at least the nominal share falls inside
    assert scores["coverage_80"] >= 0.8 - 1e-9 and scores["wql"] > 0
