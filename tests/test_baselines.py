from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forecast.baselines import LinearBaseline, naive, seasonal_naive
from forecast.config import EvalConfig, SplitConfig, WindowConfig
from forecast.data import SeriesSet
from forecast.evaluate import BASELINES, evaluate
from forecast.model import build_model
from forecast.windows import prepare


def test_naive_repeats_last_value():
    x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]])
    y = naive(x, 4)
    assert y.shape == (1, 4, 2)
    assert y[0].tolist() == [[3.0, 30.0]] * 4


def test_seasonal_naive_by_hand():
    x = torch.arange(1.0, 6.0).reshape(1, 5, 1)  # 1 2 3 4 5
    # season 2: last season is [4, 5]; steps copy 4, 5, 4, 5, 4
    assert seasonal_naive(x, 5, 2).flatten().tolist() == [4, 5, 4, 5, 4]
    # season 3: last season [3, 4, 5]
    assert seasonal_naive(x, 4, 3).flatten().tolist() == [3, 4, 5, 3]
    # season 1 is the naive forecast
    assert torch.equal(seasonal_naive(x, 3, 1), naive(x, 3))
    with pytest.raises(ValueError, match=r"season 6 is longer than the lookback 5"):
        seasonal_naive(x, 2, 6)


def linear_series(n: int = 400) -> SeriesSet:
    # Sinusoids obey x[t+1] = 2cos(w) x[t] - x[t-1]: every future value is linear in the past.
    t = np.arange(n)
    values = np.stack([np.sin(2 * np.pi * t / 17), 3 * np.cos(2 * np.pi * t / 29) + 1], 1)
    return SeriesSet(["s"], [values.astype(np.float32)],
                     [pd.date_range("2024-01-01", periods=n, freq="h")], ["u", "v"], "h")


def test_linear_baseline_recovers_linear_relation():
    prepared = prepare(linear_series(), SplitConfig(), WindowConfig(lookback=8, horizon=4))
    linear = LinearBaseline(alpha=1e-8).fit(prepared.windows("train"), max_windows=10_000)
    assert len(linear.models) == 2
    x, y = prepared.windows("test").gather(torch.arange(len(prepared.windows("test"))))
    pred = linear(x)
    assert pred.shape == y.shape and pred.dtype == torch.float32
    assert float((pred - y).abs().max()) < 1e-3
    # The naive forecast is far off on the same windows: the test has teeth.
    assert float((naive(x, 4) - y).abs().max()) > 0.1


def test_linear_baseline_subsamples_to_max_windows():
    prepared = prepare(linear_series(), SplitConfig(), WindowConfig(lookback=8, horizon=4))
    linear = LinearBaseline().fit(prepared.windows("train"), max_windows=50)
    assert linear.models[0].n_features_in_ == 8
    assert linear.models[0].coef_.shape == (4, 8)


def test_evaluate_scores_every_model_on_the_same_windows(tiny_config, tiny_prepared):
    torch.manual_seed(0)
    model = build_model(tiny_config.model, 24, 6, 2)
    result = evaluate(model, tiny_prepared, EvalConfig(linear_max_windows=500), season=24)
    assert set(result.baselines) == set(BASELINES)
    n_test = len(tiny_prepared.windows("test"))
    assert result.model.windows == n_test
    assert all(s.windows == n_test for s in result.baselines.values())
    metrics = result.metrics()
    assert metrics["skill_naive"] == pytest.approx(
        1 - metrics["test_mse"] / metrics["baseline_naive_mse"])
    table = result.table()
    for name in ("transformer", "naive", "seasonal_naive", "linear"):
        assert any(line.startswith(name) for line in table.splitlines())
    assert f"{n_test} test windows scored" in table
    # A season longer than the lookback leaves seasonal naive out.
    longer = evaluate(model, tiny_prepared, EvalConfig(linear_max_windows=500), season=48)
    assert "seasonal_naive" not in longer.baselines


def test_a_season_as_long_as_the_training_rows_is_reported(tiny_config, tiny_prepared, caplog):
    model = build_model(tiny_config.model, 24, 6, 2)
    rows = len(tiny_prepared.train_rows())
    evaluate(model, tiny_prepared, EvalConfig(linear_max_windows=500), season=rows - 1)
    assert not [m for m in caplog.messages if "MASE" in m]
    with_season = evaluate(model, tiny_prepared, EvalConfig(linear_max_windows=500), season=rows)
    [said] = [m for m in caplog.messages if "MASE" in m]
    assert said.startswith(f"MASE is scaled by one-step differences, not seasonal ones: the "
                           f"season ({rows} steps")
    # the scale it fell back to: mean absolute one-step difference of the training rows
    one_step = evaluate(model, tiny_prepared, EvalConfig(linear_max_windows=500), season=1)
    assert with_season.model.mase == pytest.approx(one_step.model.mase)
