from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forecast.metrics import MetricAccumulator, mase_scale, skill


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_one_window_one_channel_by_hand():
    # Scaled pred [1, -1], target [0, 1]; mean 10, std 2, MASE denominator 4.
    acc = MetricAccumulator(2, mean=np.array([10.0]), std=np.array([2.0]),
                            mase_denom=np.array([4.0]))
    acc.update(t([[[1.0], [-1.0]]]), t([[[0.0], [1.0]]]))
    s = acc.result()
    # scaled errors 1, -2
    assert s.mse == pytest.approx((1 + 4) / 2)
    assert s.mae == pytest.approx((1 + 2) / 2)
    # original-unit errors 2, -4; originals: pred 12, 8, target 10, 12
    assert s.mae_orig == pytest.approx(3.0)
    assert s.rmse_orig == pytest.approx(math.sqrt((4 + 16) / 2))
    assert s.mase == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert s.smape == pytest.approx(100 * (2 * 2 / (12 + 10) + 2 * 4 / (8 + 12)) / 2)
    assert s.mse_per_step == pytest.approx([1.0, 4.0])
    assert s.mae_per_step == pytest.approx([1.0, 2.0])
    assert s.windows == 1


def test_two_channels_use_their_own_scale():
    # Channel 0: mean 0, std 1; channel 1: mean 100, std 10; denominators 1 and 5.
    acc = MetricAccumulator(1, mean=np.array([0.0, 100.0]), std=np.array([1.0, 10.0]),
                            mase_denom=np.array([1.0, 5.0]))
    acc.update(t([[[0.5, 1.0]]]), t([[[0.0, 0.0]]]))
    s = acc.result()
    assert s.mse == pytest.approx((0.25 + 1.0) / 2)
    assert s.mae_orig == pytest.approx((0.5 + 10.0) / 2)
    assert s.rmse_orig == pytest.approx(math.sqrt((0.25 + 100.0) / 2))
    assert s.mase == pytest.approx((0.5 / 1 + 10 / 5) / 2)
    # originals: ch0 pred 0.5 target 0; ch1 pred 110 target 100
    assert s.smape == pytest.approx(100 * (2 * 0.5 / 0.5 + 2 * 10 / 210) / 2)


def test_smape_of_two_zeros_is_zero():
    acc = MetricAccumulator(1, np.array([0.0]), np.array([1.0]), np.array([1.0]))
    acc.update(t([[[0.0]]]), t([[[0.0]]]))
    assert acc.result().smape == 0.0


def test_per_step_curves():
    acc = MetricAccumulator(3, np.zeros(2), np.ones(2), np.ones(2))
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]],
                           [[1.0, -1.0], [0.0, 2.0], [3.0, 1.0]]])
    acc.update(pred, target)
    s = acc.result()
    # step 1: errors 1,1,1,1; step 2: 2,0,0,2; step 3: 0,0,3,1 (4 values per step)
    assert s.mse_per_step == pytest.approx([1.0, 2.0, 2.5])
    assert s.mae_per_step == pytest.approx([1.0, 1.0, 1.0])
    assert s.mse == pytest.approx(np.mean([1.0, 2.0, 2.5]))
    assert s.windows == 2


def test_two_batches_equal_one_batch():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 4, 3, generator=gen), torch.randn(7, 4, 3, generator=gen)
    args = (4, np.array([1.0, -2.0, 30.0]), np.array([0.5, 2.0, 10.0]),
            np.array([0.3, 1.0, 4.0]))
    whole, parts = MetricAccumulator(*args), MetricAccumulator(*args)
    whole.update(pred, target)
    parts.update(pred[:3], target[:3])
    parts.update(pred[3:], target[3:])
    a, b = whole.result(), parts.result()
    for name in ("mse", "mae", "mae_orig", "rmse_orig", "mase", "smape"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12), name
    assert a.mse_per_step == pytest.approx(b.mse_per_step, rel=1e-12)
    assert a.windows == b.windows == 7
    # And the whole agrees with a direct numpy computation.
    err = (pred - target).double().numpy()
    assert a.mse == pytest.approx(float((err**2).mean()))
    assert a.mae_orig == pytest.approx(float(np.abs(err * args[2]).mean()))


def test_empty_accumulator_raises():
    with pytest.raises(ValueError, match=r"no windows were scored"):
        MetricAccumulator(2, np.zeros(1), np.ones(1), np.ones(1)).result()


def test_mase_scale_by_hand():
    rows = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [6.0, 0.0]])
    # season 2: |2-1|, |6-3| → 2; channel 1 never changes → falls back to 1
    np.testing.assert_allclose(mase_scale(rows, 2), [2.0, 1.0])
    # season 1: |3-1|, |2-3|, |6-2| → 7/3
    np.testing.assert_allclose(mase_scale(rows, 1), [7 / 3, 1.0])
    # a season as long as the rows falls back to lag 1
    np.testing.assert_allclose(mase_scale(rows, 4), [7 / 3, 1.0])


def test_as_metrics_prefixes():
    acc = MetricAccumulator(1, np.zeros(1), np.ones(1), np.ones(1))
    acc.update(t([[[1.0]]]), t([[[0.0]]]))
    m = acc.result().as_metrics("test_")
    assert set(m) == {"test_mse", "test_mae", "test_mae_orig", "test_rmse_orig", "test_mase",
                      "test_smape"}
    assert m["test_mse"] == 1.0


def test_skill():
    assert skill(0.75, 1.0) == pytest.approx(0.25)
    assert skill(2.0, 1.0) == pytest.approx(-1.0)
    assert skill(1.0, 1.0) == 0.0
    assert math.isnan(skill(1.0, 0.0))


def test_evaluation_table_keeps_columns_apart_for_large_values():
    from forecast.evaluate import Evaluation
    from forecast.metrics import Scores

    def scores(mse: float) -> Scores:
        return Scores(mse=mse, mae=0.5, mae_orig=1234.5678, rmse_orig=98765.4321, mase=12.345,
                      smape=26.28, windows=10, mse_per_step=[mse], mae_per_step=[0.5])

    # a baseline 50x better than the model: skill -4900.0%, which ran into sMAPE before
    table = Evaluation("test", 24, scores(1.0), {"naive": scores(0.02)}).table()
    naive = next(line for line in table.splitlines() if line.startswith("naive"))
    assert naive.split() == ["naive", "0.0200", "0.5000", "1234.5678", "98765.4321", "12.345",
                             "26.28", "-4900.0%"]


def test_a_perfect_baseline_has_no_skill_rather_than_nan():
    from forecast.evaluate import Evaluation
    from forecast.metrics import Scores

    def scores(mse: float) -> Scores:
        return Scores(mse=mse, mae=0.5, mae_orig=1.0, rmse_orig=1.0, mase=1.0, smape=1.0,
                      windows=10, mse_per_step=[mse], mae_per_step=[0.5])

    # constant data: naive is exact, so "the share of its MSE removed" is undefined; it printed
    # +nan% and wrote NaN (not JSON) into metrics.json and MLflow; a 6-digit skill ran into sMAPE
    result = Evaluation("test", 24, scores(1.0), {"naive": scores(0.0), "linear": scores(1e-6)})
    rows = {line.split()[0]: line.split() for line in result.table().splitlines()[2:5]}
    assert rows["naive"][-1] == "n/a"
    assert rows["linear"][-2:] == ["1.00", "-99999900.0%"]
    assert "n/a: the baseline's MSE is 0" in result.table()
    metrics = result.metrics()
    assert "skill_naive" not in metrics
    assert metrics["skill_linear"] == pytest.approx(1 - 1 / 1e-6)
