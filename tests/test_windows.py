from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.config import SplitConfig, WindowConfig
from forecast.data import SeriesSet
from forecast.errors import ConfigError, DataError
from forecast.scaling import Scaler
from forecast.windows import (
    BLOCKS,
    Bounds,
    WindowIndex,
    prepare,
    random_pad_mask,
    split_bounds,
    window_count,
)


def make_series(lengths: list[int], n_channels: int, seed: int = 0) -> SeriesSet:
    """Long-layout style: one array per series, distinct values everywhere."""
    rng = np.random.default_rng(seed)
    values = [(rng.normal(5.0 * (i + 1), 1.0 + i, size=(n, n_channels))).astype(np.float32)
              for i, n in enumerate(lengths)]
    stamps = [pd.date_range("2024-01-01", periods=n, freq="h") for n in lengths]
    return SeriesSet([f"s{i}" for i in range(len(lengths))], values, stamps,
                     [f"c{c}" for c in range(n_channels)], "h")


def expected_starts(first_target: int, end: int, horizon: int, stride: int) -> list[int]:
    """Target start rows t = first_target, first_target + stride, ... with t + H <= end."""
    return list(range(first_target, end - horizon + 1, stride))


@st.composite
def window_cases(draw):
    L = draw(st.integers(1, 12))
    H = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 5))
    n_series = draw(st.integers(1, 3))
    n_channels = draw(st.integers(1, 3))
    train = L + H + draw(st.integers(0, 20))
    val = H + draw(st.integers(0, 8))
    test_given = draw(st.booleans())
    test = H + draw(st.integers(0, 8))
    extra = [draw(st.integers(0, 10)) for _ in range(n_series)]
    lengths = [train + val + test + e for e in extra]
    split = SplitConfig(by="rows", train=train, val=val, test=test if test_given else None)
    seed = draw(st.integers(0, 2**16))
    return L, H, stride, lengths, n_channels, split, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window_cases())
def test_window_properties(case):
    L, H, stride, lengths, C, split, seed = case
    series = make_series(lengths, C, seed)
    prepared = prepare(series, split, WindowConfig(lookback=L, horizon=H, stride=stride))
    assert len(prepared.bounds) == len(lengths)
    assert list(prepared.offsets) == list(np.cumsum([0] + lengths[:-1]))

    # The scaler saw the training rows only.
    pairs = zip(series.values, prepared.bounds, strict=True)
    train_rows = np.concatenate([v[: b.train] for v, b in pairs])
    train64 = train_rows.astype(np.float64)
    np.testing.assert_allclose(prepared.scaler.mean, train64.mean(0), rtol=1e-6, atol=1e-6)
    std = train64.std(0)
    std = np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(prepared.scaler.scale, std, rtol=1e-5)
    scaled = [(v.astype(np.float64) - train64.mean(0)) / std for v in series.values]

    for block in BLOCKS:
        ws = prepared.windows(block)
        index = prepared.index[block]
        block_stride = stride if block == "train" else 1
        k = torch.arange(len(ws))
        runs, starts = index.locate(k)
        x, y = ws.gather(k)
        assert x.shape == (len(ws), L, C) and y.shape == (len(ws), H, C)
        for c in range(C):
            xc, yc = ws.gather_channel(k, c)
            assert torch.equal(xc, x[:, :, c]) and torch.equal(yc, y[:, :, c])

        seen = {s: [] for s in range(len(lengths))}
        for j in range(len(ws)):
            s = int(index.series[runs[j]])
            off, b = int(prepared.offsets[s]), prepared.bounds[s]
            local = int(starts[j]) - off  # input start row inside series s
            t = local + L  # first target row inside series s
            # The window stays inside its own series.
            assert 0 <= local and t + H <= lengths[s]
            # The target lies in its block: no val/test row is ever a training target.
            lo = {"train": 0, "val": b.train, "test": b.val}[block]
            hi = getattr(b, block)
            assert lo <= t and t + H <= hi
            # Input and target are the scaled rows [local, t) and [t, t + H) of that series.
            np.testing.assert_allclose(x[j].numpy(), scaled[s][local:t], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(y[j].numpy(), scaled[s][t:t + H], rtol=1e-4, atol=1e-4)
            seen[s].append(t)

        for s, b in enumerate(prepared.bounds):
            first = L if block == "train" else {"val": b.train, "test": b.val}[block]
            end = getattr(b, block)
            want = expected_starts(first, end, H, block_stride)
            assert seen[s] == want
            assert len(want) == max((end - first - H) // block_stride + 1, 0)
            if block != "train" and want:
                # val/test inputs start L rows before the block: the first target is its start.
                assert want[0] == first


def test_window_count_formula():
    assert window_count(10, 30, 5, 1) == 16
    assert window_count(10, 30, 5, 4) == 4  # targets at 10, 14, 18, 22 (26 + 5 > 30)
    assert window_count(10, 14, 5, 1) == 0
    assert window_count(10, 15, 5, 3) == 1


def test_window_index_locate_by_hand():
    index = WindowIndex(np.array([0, 100]), np.array([3, 2]), stride=2, series=np.array([0, 1]))
    runs, starts = index.locate(torch.arange(5))
    assert runs.tolist() == [0, 0, 0, 1, 1]
    assert starts.tolist() == [0, 2, 4, 100, 102]
    assert len(index) == 5


def test_split_bounds_fractions_rows_dates():
    stamps = pd.date_range("2024-01-01", periods=100, freq="h")
    assert split_bounds(stamps, SplitConfig()) == Bounds(70, 80, 100)
    assert split_bounds(stamps, SplitConfig(train=0.5, val=0.25, test=None)) == Bounds(50, 75, 100)
    assert split_bounds(stamps, SplitConfig(by="rows", train=60, val=10, test=5)) == Bounds(
        60, 70, 75)
    dates = SplitConfig(by="dates", train="2024-01-02", val="2024-01-03", test=None)
    assert split_bounds(stamps, dates) == Bounds(24, 48, 100)


def test_split_dates_with_an_offset_are_compared_in_utc():
    # the data's timestamps are naive UTC (aware ones are converted when read)
    stamps = pd.date_range("2024-01-01", periods=100, freq="h")
    dates = SplitConfig(by="dates", train="2024-01-02T02:00+02:00",
                        val="2024-01-02T12:00-12:00", test=None)
    assert split_bounds(stamps, dates) == Bounds(24, 48, 100)


def test_split_rows_longer_than_series():
    stamps = pd.date_range("2024-01-01", periods=50, freq="h")
    with pytest.raises(DataError, match=r"split asks for 70 rows .* but the series has 50"):
        split_bounds(stamps, SplitConfig(by="rows", train=50, val=10, test=10))


def test_lookback_plus_horizon_longer_than_train_split():
    series = make_series([100], 1)
    with pytest.raises(ConfigError) as err:
        prepare(series, SplitConfig(), WindowConfig(lookback=60, horizon=20))
    msg = str(err.value)
    assert "windows.lookback (60) + windows.horizon (20) = 80 rows" in msg
    assert "training split (70 rows)" in msg


def test_val_block_shorter_than_horizon():
    series = make_series([100], 1)
    with pytest.raises(ConfigError, match=r"the val split holds fewer than windows.horizon"):
        prepare(series, SplitConfig(by="rows", train=80, val=3, test=17),
                WindowConfig(lookback=10, horizon=5))


def test_short_series_are_skipped_with_a_note():
    series = make_series([200, 20], 1)
    prepared = prepare(series, SplitConfig(), WindowConfig(lookback=20, horizon=5))
    assert prepared.series.ids == ["s0"]
    assert len(prepared.bounds) == 1
    assert any("skipped 1 series" in n for n in prepared.series.notes)
    # The scaler only saw the kept series' training rows.
    np.testing.assert_allclose(prepared.scaler.mean, series.values[0][:140].mean(0), rtol=1e-5)


def test_unfolded_windows_share_storage_with_data():
    series = make_series([3000, 2000], 3)
    prepared = prepare(series, SplitConfig(), WindowConfig(lookback=96, horizon=24))
    for block in BLOCKS:
        ws = prepared.windows(block)
        # A view on the scaled data: same storage, no [windows x L] copy.
        assert ws.unfolded.data_ptr() == prepared.data.data_ptr()
        storage = ws.unfolded.untyped_storage()
        assert storage.data_ptr() == prepared.data.untyped_storage().data_ptr()
        assert ws.unfolded.shape == (5000 - 120 + 1, 3, 120)
        assert storage.nbytes() == 5000 * 3 * 4
    assert prepared.data.shape == (5000, 3)


def test_batches_cover_every_window_once():
    series = make_series([300], 2)
    prepared = prepare(series, SplitConfig(), WindowConfig(lookback=10, horizon=3, stride=2))
    ws = prepared.windows("train")
    x_all, y_all = ws.gather(torch.arange(len(ws)))
    xs = torch.cat([x for x, _ in ws.batches(7)])
    assert torch.equal(xs, x_all)
    gen = torch.Generator().manual_seed(0)
    shuffled = torch.cat([y for _, y in ws.batches(7, shuffle=True, generator=gen)])
    assert shuffled.shape == y_all.shape and not torch.equal(shuffled, y_all)
    # Same windows, another order: sort rows to compare.
    key = lambda t: sorted(map(tuple, t.reshape(len(t), -1).tolist()))  # noqa: E731
    assert key(shuffled) == key(y_all)
    limited = list(ws.batches(7, shuffle=True, generator=gen, limit=10))
    assert sum(len(x) for x, _ in limited) == 10


def test_given_scaler_is_used_as_is():
    series = make_series([200], 2)
    scaler = Scaler(np.array([1.0, 2.0]), np.array([2.0, 4.0]))
    prepared = prepare(series, SplitConfig(), WindowConfig(lookback=10, horizon=2), scaler)
    assert prepared.scaler is scaler
    expected = (series.values[0] - np.array([1.0, 2.0])) / np.array([2.0, 4.0])
    np.testing.assert_allclose(prepared.data.numpy(), expected, rtol=1e-6)


def test_random_pad_mask():
    gen = torch.Generator().manual_seed(0)
    assert random_pad_mask(8, 16, 4, 0.0, gen) is None
    assert random_pad_mask(8, 16, 16, 1.0, gen) is None
    mask = random_pad_mask(64, 16, 4, 1.0, gen)
    assert mask is not None and mask.shape == (64, 16) and mask.dtype == torch.bool
    padded = mask.sum(1)
    assert padded.min() >= 0 and padded.max() <= 16 - 4
    assert padded.max() > 0
    # Left padding: each row is True for a prefix, then False to the end.
    for row, n in zip(mask, padded.tolist(), strict=True):
        assert row[:n].all() and not row[n:].any()
    assert not mask[:, -4:].any()  # the last min_history steps are always real
    half = random_pad_mask(2000, 16, 4, 0.25, torch.Generator().manual_seed(1))
    share = (half.any(1)).float().mean().item()
    # chosen with p = 0.25, then 1 in 13 draws keep = L (no padding): 0.25 * 12 / 13 = 0.23
    assert 0.19 < share < 0.27
