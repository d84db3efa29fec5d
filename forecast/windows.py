"""Chronological splits, per-column scaling and lazy lookback/horizon windows.

All series are scaled and concatenated into one tensor [rows x channels]. A window is never
materialised until a batch asks for it: a `WindowIndex` maps window numbers to row offsets by
arithmetic (per series: first target row, count, stride), and a batch is one gather from the
`Tensor.unfold` view of the data. Memory is O(rows), never O(windows x lookback).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from forecast.config import SplitConfig, WindowConfig
from forecast.data import SeriesSet
from forecast.errors import ConfigError, DataError
from forecast.scaling import Scaler

BLOCKS = ("train", "val", "test")


@dataclass(frozen=True)
class Bounds:
    """Row boundaries of one series: train [0, train), val [train, val), test [val, test)."""

    train: int
    val: int
    test: int


def _naive_utc(text: str) -> pd.Timestamp:
    """A split date as the data's timestamps are held: naive, aware ones converted to UTC."""
    stamp = pd.Timestamp(text)
    return stamp if stamp.tz is None else stamp.tz_convert("UTC").tz_localize(None)


def split_bounds(stamps: pd.DatetimeIndex, cfg: SplitConfig) -> Bounds:
    """Where each block ends for one series of len(stamps) rows."""
    n = len(stamps)
    if cfg.by == "dates":
        ends = [
            n if v is None else int(stamps.searchsorted(_naive_utc(str(v)), side="left"))
            for v in (cfg.train, cfg.val, cfg.test)
        ]
        return Bounds(*ends)
    if cfg.by == "fractions":
        sizes = [int(n * float(v)) for v in (cfg.train, cfg.val)]
        sizes.append(n - sum(sizes) if cfg.test is None else int(n * float(cfg.test)))
    else:
        sizes = [int(v) for v in (cfg.train, cfg.val)]
        sizes.append(n - sum(sizes) if cfg.test is None else int(cfg.test))
        if sum(sizes) > n:
            raise DataError(
                f"split asks for {sum(sizes)} rows (train {sizes[0]} + val {sizes[1]} + test "
                f"{sizes[2]}) but the series has {n}; lower split.train/val/test"
            )
    train = sizes[0]
    return Bounds(train, train + sizes[1], train + sizes[1] + sizes[2])


def window_count(first_target: int, end: int, horizon: int, stride: int) -> int:
    """Windows whose target [t, t+H) starts at first_target + k*stride and ends by `end`."""
    room = end - first_target - horizon
    return 0 if room < 0 else room // stride + 1


class WindowIndex:
    """Window number → input start row, by arithmetic over per-series runs."""

    def __init__(self, first_input: np.ndarray, counts: np.ndarray, stride: int,
                 series: np.ndarray) -> None:
        self.first_input = torch.as_tensor(first_input, dtype=torch.int64)
        self.counts = torch.as_tensor(counts, dtype=torch.int64)
        self.ends = torch.cumsum(self.counts, 0)
        self.stride = stride
        self.series = torch.as_tensor(series, dtype=torch.int64)  # series number of each run

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def locate(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run number and global input start row for window numbers k."""
        run = torch.searchsorted(self.ends, k, right=True)
        before = self.ends[run] - self.counts[run]
        return run, self.first_input[run] + (k - before) * self.stride

    def starts(self, k: torch.Tensor) -> torch.Tensor:
        return self.locate(k)[1]


@dataclass
class Prepared:
    """Scaled, concatenated series with the window indexes of each block."""

    data: torch.Tensor  # [rows x C] float32, scaled
    offsets: np.ndarray  # first row of each series in `data`
    series: SeriesSet
    bounds: list[Bounds]
    scaler: Scaler
    lookback: int
    horizon: int
    index: dict[str, WindowIndex]

    @property
    def n_channels(self) -> int:
        return self.data.shape[1]

    def windows(self, block: str) -> WindowSet:
        return WindowSet(self.data, self.index[block], self.lookback, self.horizon)

    def train_rows(self) -> np.ndarray:
        """Unscaled training rows of every series, stacked: [rows x C]."""
        pairs = zip(self.series.values, self.bounds, strict=True)
        return np.concatenate([v[: b.train] for v, b in pairs])


class WindowSet:
    """The windows of one block, served as batches gathered from an unfold view."""

    def __init__(self, data: torch.Tensor, index: WindowIndex, lookback: int, horizon: int):
        self.index = index
        self.lookback = lookback
        self.horizon = horizon
        self.n_channels = data.shape[1]
        # view: [rows - L - H + 1 x C x (L + H)], no copy
        self.unfolded = data.unfold(0, lookback + horizon, 1)

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [B x L x C] and targets [B x H x C] of window numbers k."""
        w = self.unfolded[self.index.starts(k)].transpose(1, 2)  # [B x (L+H) x C]
        return w[:, : self.lookback], w[:, self.lookback :]

    def gather_channel(self, k: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [B x L] and targets [B x H] of window numbers k, one channel only."""
        w = self.unfolded[:, channel][self.index.starts(k)]  # [B x (L+H)]
        return w[:, : self.lookback], w[:, self.lookback :]

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        limit: int | None = None, rank: int = 0, world: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `batch_size` windows in order, or shuffled by `generator` (the first
        `limit` of the permutation). With world > 1 every rank draws the same batches and
        keeps windows rank, rank + world, ... of each: the ranks' shares of a batch together
        are the batch one process would take (given the same generator)."""
        n = len(self)
        if shuffle:
            # int32 halves the permutation's memory on long series (10M windows: 40 MB, not 80)
            dtype = torch.int32 if n < 2**31 else torch.int64
            order = torch.randperm(n, generator=generator, dtype=dtype)
            if limit is not None:
                order = order[:limit]
        else:
            order = None
        total = n if order is None else len(order)
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            k = torch.arange(lo, hi) if order is None else order[lo:hi].long()
            yield self.gather(k if world == 1 else k[rank::world].contiguous())


def prepare(series: SeriesSet, split: SplitConfig, win: WindowConfig,
            scaler: Scaler | None = None) -> Prepared:
    """Split each series, fit the scaler on training rows (unless one is given, as when a saved
    model is re-scored), and index every block's windows."""
    L, H = win.lookback, win.horizon
    bounds = [split_bounds(ts, split) for ts in series.timestamps]
    usable = [i for i, b in enumerate(bounds) if b.train >= L + H]
    if not usable:
        b = bounds[0]
        raise ConfigError(
            f"windows.lookback ({L}) + windows.horizon ({H}) = {L + H} rows do not fit in the "
            f"training split ({b.train} rows{' in the shortest series' if len(bounds) > 1 else ''}"
            "); shorten the lookback/horizon or give split.train more rows"
        )
    if len(usable) < len(bounds):
        series.notes.append(
            f"skipped {len(bounds) - len(usable)} series shorter than lookback + horizon in train"
        )
    values = [series.values[i] for i in usable]
    kept = SeriesSet(
        [series.ids[i] for i in usable], values, [series.timestamps[i] for i in usable],
        series.channels, series.freq, series.source, series.digest, series.notes,
    )
    bounds = [bounds[i] for i in usable]
    if scaler is None:
        scaler = Scaler.fit(v[: b.train] for v, b in zip(values, bounds, strict=True))
    scaled = np.concatenate([scaler.transform(v).astype(np.float32, copy=False) for v in values])
    offsets = np.cumsum([0] + [len(v) for v in values[:-1]])

    index = {}
    for block in BLOCKS:
        stride = win.stride if block == "train" else 1
        firsts, counts, owners = [], [], []
        for s, (off, b) in enumerate(zip(offsets, bounds, strict=True)):
            lo = 0 if block == "train" else getattr(b, BLOCKS[BLOCKS.index(block) - 1])
            hi = getattr(b, block)
            first_target = max(lo, L)  # val/test inputs start L rows before their block
            n = window_count(first_target, hi, H, stride)
            if n:
                firsts.append(off + first_target - L)
                counts.append(n)
                owners.append(s)
        index[block] = WindowIndex(np.array(firsts, dtype=np.int64),
                                   np.array(counts, dtype=np.int64), stride,
                                   np.array(owners, dtype=np.int64))
    for block in ("val", "test"):
        if not len(index[block]):
            raise ConfigError(
                f"the {block} split holds fewer than windows.horizon ({H}) rows, so it has no "
                f"windows; give split.{block} more rows or shorten the horizon"
            )
    return Prepared(torch.from_numpy(scaled), offsets, kept, bounds, scaler, L, H, index)


def random_pad_mask(batch: int, lookback: int, min_history: int, share: float,
                    generator: torch.Generator) -> torch.Tensor | None:
    """Left-pad a random share of windows to a random history length in [min_history, L]."""
    if share <= 0 or min_history >= lookback:
        return None
    chosen = torch.rand(batch, generator=generator) < share
    if not chosen.any():
        return None
    keep = torch.randint(min_history, lookback + 1, (batch,), generator=generator)
    keep = torch.where(chosen, keep, torch.full_like(keep, lookback))
    return torch.arange(lookback).unsqueeze(0) < (lookback - keep).unsqueeze(1)  # [B x L]
