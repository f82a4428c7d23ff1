"""Reward-hacking guards: held-out metrics that are *not* in the reward must not fall.

RL maximises whatever the reward measures; a policy can raise it while the face drifts (identity
lost, landmarks moved, PSNR collapsing). Every ``guard.every`` epochs the trainer restores a fixed
held-out set with a fixed seed and compares these metrics with their values before RL started.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..eval.landmarks import LandmarkDetector, landmark_distances
from ..eval.metrics import psnr, ssim
from ..rewards import RewardInput
from ..rewards.identity import IdentityReward

# +1: higher is better, -1: lower is better
GUARD_METRICS = {"psnr": +1, "ssim": +1, "identity": +1, "lmd": -1}


def guard_violations(baseline: dict[str, float], current: dict[str, float], metrics: tuple[str, ...], tolerance: float) -> list[str]:
    """Metrics that got worse than ``baseline`` by more than ``tolerance`` (relative), direction-aware.

    For a higher-is-better metric m the limit is baseline * (1 - tolerance) when baseline > 0; for
    a lower-is-better one, baseline * (1 + tolerance). A metric missing or NaN in ``current``
    counts as a violation (the guard cannot vouch for it).
    """
    bad = []
    for m in metrics:
        sign = GUARD_METRICS[m]
        b, c = baseline.get(m), current.get(m)
        if b is None or not math.isfinite(b):
            continue  # no baseline: nothing to compare with
        if c is None or not math.isfinite(c):
            bad.append(f"{m}: not measurable")
            continue
        limit = b - sign * tolerance * abs(b)
        if (sign > 0 and c < limit) or (sign < 0 and c > limit):
            bad.append(f"{m}: {c:.4g} vs {b:.4g} at start (limit {limit:.4g})")
    return bad


class GuardMetrics:
    """Computes the guard metrics of restored images against their GT, models loaded once."""

    def __init__(self, metrics: tuple[str, ...], device: torch.device | str = "cpu"):
        unknown = sorted(set(metrics) - set(GUARD_METRICS))
        if unknown:
            raise ValueError(f"guard.metrics has unknown names {unknown}; known: {sorted(GUARD_METRICS)}")
        self.metrics = metrics
        self.identity = None
        self.landmarks = None
        if "identity" in metrics:  # SFace, from the weights registry (a clear error when missing)
            self.identity = IdentityReward(device=device, cache_key=None)
        if "lmd" in metrics:
            self.landmarks = LandmarkDetector()
        self._gt_landmarks = None

    @torch.no_grad()
    def __call__(self, images: Tensor, gt: Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        if "psnr" in self.metrics:
            out["psnr"] = float(psnr(images, gt).mean())
        if "ssim" in self.metrics:
            out["ssim"] = float(ssim(images, gt).mean())
        if self.identity is not None:
            out["identity"] = float(self.identity(RewardInput(images=images, gt=gt)).scores.mean())
        if self.landmarks is not None:
            if self._gt_landmarks is None:  # the held-out GT never changes
                self._gt_landmarks = self.landmarks.detect_batch(gt.cpu())
            d = landmark_distances(self.landmarks.detect_batch(images.cpu()), self._gt_landmarks)
            out["lmd"] = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
        return out
