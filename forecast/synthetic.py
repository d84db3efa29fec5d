"""A realistic multivariate demo series, generated offline from a seed.

Hourly channels that share a slowly moving common factor (cross-channel correlation), each with
daily and weekly cycles (weaker at weekends), a trend and autocorrelated noise. Nothing here is
tuned to favour any model: the parameters are plain physical-looking choices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _ar1(rng: np.random.Generator, n: int, rho: float, sigma: float) -> np.ndarray:
    shocks = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    out[0] = shocks[0] / np.sqrt(1 - rho**2)
    for t in range(1, n):
        out[t] = rho * out[t - 1] + shocks[t]
    return out


def synthetic_frame(n_rows: int = 8760, n_channels: int = 5, seed: int = 0,
                    start: str = "2024-01-01", freq: str = "h") -> pd.DataFrame:
    """A wide frame: `date` plus channels `load_0..load_{n-1}`."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows, dtype=np.float64)
    stamps = pd.date_range(start, periods=n_rows, freq=freq)
    weekend = np.asarray(stamps.day_of_week >= 5, dtype=np.float64)
    common = _ar1(rng, n_rows, rho=0.98, sigma=0.35)  # shared weather-like factor
    cols = {"date": stamps}
    for c in range(n_channels):
        phase_d, phase_w = rng.uniform(0, 2 * np.pi, 2)
        daily = rng.uniform(1.0, 3.0) * np.sin(2 * np.pi * t / 24 + phase_d) \
            + rng.uniform(0.2, 0.8) * np.sin(4 * np.pi * t / 24 + 2 * phase_d)
        daily *= 1.0 - 0.4 * weekend
        weekly = rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * t / 168 + phase_w)
        trend = rng.uniform(-1.0, 1.0) * t / n_rows
        loading = rng.uniform(0.5, 1.5)
        noise = _ar1(rng, n_rows, rho=0.6, sigma=rng.uniform(0.3, 0.6))
        level = rng.uniform(5.0, 20.0)
        cols[f"load_{c}"] = level + daily + weekly + trend + loading * common + noise
    return pd.DataFrame(cols)
