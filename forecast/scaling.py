"""Per-column standardisation fitted on training rows: (x - mean) / scale.

Numerically the same as scikit-learn's `StandardScaler.partial_fit` over the series in turn
(float64 accumulators, Chan-Golub-LeVeque corrected two-pass variance, near-constant columns
scaled by 1), so scaled data and saved models are unchanged. It is ours so that serving never
imports scikit-learn (about 80 MB of resident memory) and training imports it only after its
memory peak, to score the Ridge baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # [C] float64
    scale: np.ndarray  # [C] float64, never zero

    @classmethod
    def fit(cls, chunks: Iterable[np.ndarray]) -> Scaler:
        """Mean and population standard deviation of the rows of all chunks ([T_i x C])."""
        n, mean, var = 0, 0.0, 0.0  # rows so far, their mean and population variance
        for x in chunks:
            if not len(x):
                continue
            k = len(x)
            chunk_sum = np.sum(x, axis=0, dtype=np.float64)
            dev = x - chunk_sum / k
            # corrected two-pass: subtract the rounding error left in sum(dev)
            correction = np.sum(dev, axis=0, dtype=np.float64)
            chunk_m2 = np.sum(dev**2, axis=0, dtype=np.float64) - correction**2 / k
            if n == 0:
                m2 = chunk_m2
            else:
                ratio = n / k
                m2 = var * n + chunk_m2 + ratio / (n + k) * (mean * n / ratio - chunk_sum) ** 2
            mean = (mean * n + chunk_sum) / (n + k)
            n += k
            var = m2 / n
        if n == 0:
            raise ValueError("no rows to fit the scaler on")
        eps = np.finfo(np.float64).eps
        # a column whose variance is within rounding error of zero is constant: scale 1
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        return cls(np.asarray(mean, dtype=np.float64), np.where(constant, 1.0, np.sqrt(var)))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scaled copy of x [T x C], in x's float dtype."""
        out = np.array(x, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        out -= self.mean.astype(out.dtype)
        out /= self.scale.astype(out.dtype)
        return out
