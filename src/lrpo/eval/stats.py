"""Uncertainty of a comparison: mean and spread over seeds, a paired bootstrap interval over faces."""

from __future__ import annotations

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0: the seeds run are all there is) of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high): a percentile bootstrap interval of the mean paired difference.

    ``a`` and ``b`` [n] hold one value per face for two methods (the same faces in the same order);
    faces are resampled with replacement, keeping each face's pair together, so what varies between
    faces (some are harder) cancels and only the methods' difference is resampled.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired values must be two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)
