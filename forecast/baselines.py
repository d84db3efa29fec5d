"""Reference forecasters scored on exactly the windows the Transformer is scored on.

Each maps scaled inputs [B x L x C] to scaled forecasts [B x H x C].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from forecast.windows import WindowSet

if TYPE_CHECKING:
    from sklearn.linear_model import Ridge


def naive(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """Repeat the last observed value."""
    return x[:, -1:].expand(-1, horizon, -1)


def seasonal_naive(x: torch.Tensor, horizon: int, season: int) -> torch.Tensor:
    """Repeat the last full season: step h copies x[L - m + (h mod m)]."""
    L = x.shape[1]
    if season > L:
        raise ValueError(f"season {season} is longer than the lookback {L}")
    idx = L - season + torch.arange(horizon) % season
    return x[:, idx]


class LinearBaseline:
    """Ridge regression from the L inputs to the H outputs, one model per channel."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.models: list[Ridge] = []  # one per channel

    def fit(self, train: WindowSet, max_windows: int, seed: int = 0) -> LinearBaseline:
        # imported here so that a training process loads scikit-learn (about 80 MB resident)
        # only once it is scored, after the training peak
        from sklearn.linear_model import Ridge

        n = len(train)
        gen = torch.Generator().manual_seed(seed)
        # A random subset keeps the fit O(max_windows x L) however long the series.
        k = torch.randperm(n, generator=gen)[:max_windows] if n > max_windows else torch.arange(n)
        k = k.sort().values
        # one channel at a time: the windows of all channels at once can be hundreds of MB
        self.models = []
        for c in range(train.n_channels):
            x, y = train.gather_channel(k, c)  # [n x L], [n x H]
            self.models.append(Ridge(alpha=self.alpha).fit(x.numpy(), y.numpy()))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xn = x.numpy()
        cols = [m.predict(xn[:, :, c]) for c, m in enumerate(self.models)]  # each [B x H]
        return torch.from_numpy(np.stack(cols, axis=2).astype(np.float32))
