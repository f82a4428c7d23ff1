"""Plane geometry of face landmarks shared by alignment (lrpo.inference.align) and the identity
reward's crop (lrpo.rewards.identity): pure numpy functions."""

from __future__ import annotations

import numpy as np

__all__ = ["similarity_transform"]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form (1991): with centred points a = src - mean, b = dst - mean, the 2x2
    cross-covariance S = b^T a / n = U D V^T gives R = U diag(1, det(U V^T)) V^T and
    scale = trace(D diag(1, det)) / var(a). Returns the 2x3 matrix [s R | t] (cv2 convention).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity_transform needs two [N, 2] point sets (N >= 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / a.var(0).sum()
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m
