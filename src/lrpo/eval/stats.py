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


def rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors of one group (ties get their mean rank).

    1 when ``b`` orders the candidates as ``a`` does, -1 reversed; 0 for a group where either is
    constant (no order to agree with).
    """
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # ties: the mean of the ranks they share
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def signal_to_noise(scores: np.ndarray, perturbed: np.ndarray) -> dict[str, float]:
    """How far a reward term's within-group differences exceed its reaction to invisible changes.

    ``scores`` and ``perturbed`` [groups, G]: each candidate's score, and its score after an
    imperceptible change (a 1-pixel shift, a JPEG q98 round-trip). Returns the mean within-group std
    of the scores (the signal advantages are made of), the RMS of the change less its group mean
    (noise: advantages are relative to the group, so a change shared by the whole group, such as a
    shift against the GT, does not count), their ratio, and the mean rank agreement within groups
    (how often the ranking the trainer would use survives).
    """
    scores, perturbed = np.asarray(scores, dtype=np.float64), np.asarray(perturbed, dtype=np.float64)
    signal = float(scores.std(axis=1).mean())
    change = perturbed - scores
    noise = float(np.sqrt(((change - change.mean(axis=1, keepdims=True)) ** 2).mean()))
    return {"within_std": signal, "noise_rms": noise, "snr": signal / noise if noise > 0 else float("inf"),
            "rank_agreement": float(np.mean([rank_agreement(s, p) for s, p in zip(scores, perturbed)]))}


def cpu_curve(records: list[dict], key: str = "eval_reward", cpu_key: str = "time_cpu_s") -> tuple[np.ndarray, np.ndarray]:
    """(CPU minutes, value) at every training-log record holding ``key``, in log order.

    A record's CPU minutes are the sum of ``cpu_key`` (an epoch's CPU seconds) over the records up to
    and including it, so the held-out figure logged before the first epoch sits at 0 and one logged
    after epoch e at the compute epochs 1..e took. Records without ``cpu_key`` add nothing.
    """
    spent, xs, ys = 0.0, [], []
    for rec in records:
        spent += float(rec.get(cpu_key, 0.0))
        if key in rec:
            xs.append(spent / 60.0)
            ys.append(float(rec[key]))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def curve_at(xs: np.ndarray, ys: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """Piecewise-linear ``ys(xs)`` read at ``at``; NaN outside [xs[0], xs[-1]] (never extrapolated:
    a run that stopped earlier has no figure for later compute)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) == 0 or np.any(np.diff(xs) < 0):
        raise ValueError(f"a curve needs 1-D xs and ys of one length with xs non-decreasing, got {xs.shape} and {ys.shape}")
    at = np.asarray(at, dtype=np.float64)
    out = np.interp(at, xs, ys)
    return np.where((at < xs[0]) | (at > xs[-1]), np.nan, out)
