from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from forecast.scaling import Scaler


def test_hand_computed_mean_and_population_std():
    s = Scaler.fit([np.array([[1.0, 10.0], [3.0, 10.0]], dtype=np.float32),
                    np.array([[5.0, 10.0]], dtype=np.float32)])
    np.testing.assert_array_equal(s.mean, [3.0, 10.0])
    # column 0: deviations -2, 0, 2 -> variance 8/3; column 1 is constant -> scale 1
    np.testing.assert_allclose(s.scale, [np.sqrt(8 / 3), 1.0], rtol=1e-15)
    np.testing.assert_allclose(s.transform(np.array([[6.0, 12.0]], dtype=np.float32)),
                               [[3 / np.sqrt(8 / 3), 2.0]], rtol=1e-6)


def test_bit_identical_to_sklearn_partial_fit_over_chunks():
    # Saved models were trained on StandardScaler's output: the swap must not move one bit.
    rng = np.random.default_rng(0)
    for case in range(100):
        C = int(rng.integers(1, 6))
        chunks = [(rng.standard_normal((int(rng.integers(1, 400)), C)) * rng.uniform(0.01, 1e4)
                   + rng.uniform(-1e5, 1e5)).astype(np.float32)
                  for _ in range(int(rng.integers(1, 5)))]
        if case % 4 == 0:
            for c in chunks:
                c[:, 0] = 3.25
        ref = StandardScaler()
        for c in chunks:
            ref.partial_fit(c)
        ours = Scaler.fit(chunks)
        np.testing.assert_array_equal(ours.mean, ref.mean_)
        np.testing.assert_array_equal(ours.scale, ref.scale_)
        for c in chunks:
            out = ours.transform(c)
            assert out.dtype == np.float32
            np.testing.assert_array_equal(out, ref.transform(c))


def test_empty_chunks_are_skipped_and_no_rows_is_an_error():
    x = np.array([[1.0], [2.0]], dtype=np.float32)
    s = Scaler.fit([x[:0], x])
    np.testing.assert_array_equal(s.mean, [1.5])
    with pytest.raises(ValueError, match="no rows"):
        Scaler.fit([x[:0]])


def test_transform_leaves_its_input_alone():
    x = np.array([[4.0]], dtype=np.float32)
    Scaler(np.array([1.0]), np.array([3.0])).transform(x)
    assert x[0, 0] == 4.0
