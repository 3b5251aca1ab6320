"""Confidence intervals for per-user figures: a percentile bootstrap over users.

Every generation figure is a mean over users of a per-user value (a hit in {0, 1}, a share, a
cosine); resampling the users with replacement gives the interval. For a comparison of two
variants on the same users, pass the per-user differences: the interval of the mean difference.

    low, high = bootstrap_interval(hits)                   # hits: float [N]
    low, high = bootstrap_interval(hits_a - hits_b)        # paired difference
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONFIDENCE", "bootstrap_interval"]

CONFIDENCE = 0.95


def bootstrap_interval(values: np.ndarray, *, confidence: float = CONFIDENCE, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap ``confidence`` interval of the mean of ``values`` (float [N], N >= 1).

    Seeded, so the same values give the same interval. One value gives a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-d array, got shape {values.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    # Resampling in chunks keeps memory at chunk × N whatever the number of users.
    means = np.concatenate([values[rng.integers(0, len(values), size=(min(500, resamples - done), len(values)))].mean(axis=1)
                            for done in range(0, resamples, 500)])
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
