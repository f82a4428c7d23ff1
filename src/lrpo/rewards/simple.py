"""Rewards that need no model file: SSIM, MS-SSIM, PSNR, a no-reference sharpness term, brightness.

All images are [B, 3, H, W] float RGB in [0, 1]; every score is per sample, [B] float32, higher is
better.

* SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), population covariances and
  C1 = (0.01)^2, C2 = (0.03)^2, averaged over the "valid" window positions and the channels: the
  same number as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)``.
* MS-SSIM (Wang et al. 2003): contrast-structure terms at coarse-to-fine scales, luminance at the
  coarsest, with the published scale weights; fewer scales for small images (see :func:`ms_ssim`).
* PSNR in dB, capped (identical images would give infinity).
* ``sharpness``: a no-reference detail score with a noise penalty; see :func:`sharpness_score`
  for what it rewards and how it can be gamed.
* ``brightness``: the mean pixel value. Trivially learnable; it exists to check that an RL setup
  can move a policy at all (reward goes up within a few updates), never as a quality measure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BaseReward, RewardInput, RewardOutput
from .registry import register_reward

__all__ = [
    "BrightnessReward",
    "MSSSIMReward",
    "PSNRReward",
    "SSIMReward",
    "SharpnessReward",
    "gaussian_window",
    "gradient_energy",
    "luminance",
    "ms_ssim",
    "noise_sigma",
    "psnr",
    "sharpness_score",
    "ssim",
]

SSIM_K1, SSIM_K2 = 0.01, 0.03
# MS-SSIM scale weights, finest to coarsest (Wang, Simoncelli, Bovik 2003, table of exponents).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# ITU-R BT.601 luma weights (no offset: Y stays in [0, 1]).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# median(|N(0, s^2)|) = s * 0.6745: turns a median absolute value into a standard deviation
MAD_TO_SIGMA = 0.6744897501960817


def luminance(x: Tensor) -> Tensor:
    """[B, 3, H, W] RGB -> [B, 1, H, W] BT.601 luma (same range as x)."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float32, device=None) -> Tensor:
    """1-D normalised Gaussian taps with radius int(truncate * sigma + 0.5) (scipy.ndimage's rule:
    11 taps for sigma 1.5)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _blur_valid(x: Tensor, taps: Tensor) -> Tensor:
    """Separable filtering of each channel of [B, C, H, W], keeping only fully covered positions."""
    c = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _ssim_terms(x: Tensor, y: Tensor, taps: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-position SSIM map and contrast-structure map, [B, C, H - k + 1, W - k + 1]."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur_valid(x, taps), _blur_valid(y, taps)
    var_x = _blur_valid(x * x, taps) - mu_x**2
    var_y = _blur_valid(y * y, taps) - mu_y**2
    cov = _blur_valid(x * y, taps) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return lum * cs, cs


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, sigma: float = 1.5, channels: str = "rgb") -> Tensor:
    """Mean SSIM per sample.

    Args:
        x, y: [B, 3, H, W] float, values in [0, data_range]; H, W >= 11 (window size).
        channels: "rgb" (mean over the three channels, as skimage with channel_axis) or "y" (on
            BT.601 luma).
    Returns:
        [B] in [-1, 1], dtype of x; 1 for identical images.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = _select_channels(x, channels), _select_channels(y, channels)
    taps = gaussian_window(sigma, dtype=x.dtype, device=x.device)
    if min(x.shape[-2:]) < taps.numel():
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} are smaller than the {taps.numel()}-pixel window")
    s, _ = _ssim_terms(x, y, taps, data_range)
    return s.flatten(1).mean(1)


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, channels: str = "rgb", max_scales: int = 5) -> Tensor:
    """Multi-scale SSIM per sample: prod_j cs_j^w_j (j < M) * ssim_M^w_M.

    Scales are halved by 2x2 average pooling. The number of scales M is the largest <= max_scales for
    which the coarsest image still holds the 11-pixel window (3 for 64x64, 4 for 128x128, 5 from
    176 px); the first M published weights are renormalised to sum to 1, so MS-SSIM stays in [0, 1]
    and equals 1 for identical images. Negative cs / ssim values (anti-correlated structure) are
    clamped to 0 before the fractional powers, which would otherwise be undefined.
    """
    if x.shape != y.shape:
        raise ValueError(f"ms_ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = _select_channels(x, channels), _select_channels(y, channels)
    taps = gaussian_window(1.5, dtype=x.dtype, device=x.device)
    k = taps.numel()
    side = min(x.shape[-2:])
    if side < k:
        raise ValueError(f"ms_ssim: images {tuple(x.shape[-2:])} are smaller than the {k}-pixel window")
    scales = min(max_scales, int(math.floor(math.log2(side / k))) + 1)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for j in range(scales):
        s, cs = _ssim_terms(x, y, taps, data_range)
        term = (s if j == scales - 1 else cs).flatten(1).mean(1).clamp_min(0)
        result = result * term ** weights[j]
        if j < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, max_db: float = 100.0) -> Tensor:
    """PSNR in dB per sample, 10 log10(range^2 / MSE), capped at ``max_db`` (identical images).

    Args:
        x, y: [B, C, H, W] float in [0, data_range].
    """
    mse = (x - y).pow(2).flatten(1).mean(1)
    floor = data_range**2 * 10 ** (-max_db / 10)  # the MSE at which PSNR reaches max_db
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def noise_sigma(x: Tensor) -> Tensor:
    """Robust estimate of additive white noise std per sample (Donoho's MAD estimator).

    The finest orthonormal Haar diagonal band HH = (a - b - c + d) / 2 of each 2x2 block holds little
    of a natural image's energy but all of white noise's (std unchanged by the orthonormal map);
    the median of |HH| ignores the few large values on edges. sigma = median |HH| / 0.6745.

    Args:
        x: [B, 3, H, W] float in [0, 1] (measured on luma).
    Returns:
        [B], in the units of x.
    """
    y = luminance(x)
    h, w = y.shape[-2] // 2 * 2, y.shape[-1] // 2 * 2
    y = y[..., :h, :w]
    hh = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    return hh.abs().flatten(1).median(1).values / MAD_TO_SIGMA


def gradient_energy(x: Tensor) -> Tensor:
    """Mean gradient magnitude of the luma per sample, in luma units per pixel ([B]).

    Central differences on the image downsampled 2x by 2x2 averaging (one pixel there spans two
    here): the averaging halves the std of white noise while keeping edges, so noise inflates this
    far less than it would at full resolution.
    """
    y = F.avg_pool2d(luminance(x), 2)
    gx = (y[..., 1:-1, 2:] - y[..., 1:-1, :-2]) / 2
    gy = (y[..., 2:, 1:-1] - y[..., :-2, 1:-1]) / 2
    return torch.sqrt(gx**2 + gy**2 + 1e-12).flatten(1).mean(1)


# Mean gradient magnitude that white noise of std 1 contributes to gradient_energy: after 2x2
# averaging the noise std is 1/2; a central difference (a - b) / 2 of two such samples has std
# 1 / (2 sqrt 2) per axis; the magnitude of two such independent Gaussians is Rayleigh with mean
# sqrt(pi / 2) / (2 sqrt 2) = sqrt(pi) / 4.
NOISE_GRADIENT = math.sqrt(math.pi) / 4


def sharpness_score(x: Tensor, grad_scale: float = 0.1, noise_scale: float = 0.25) -> tuple[Tensor, Tensor, Tensor]:
    """No-reference detail score with a noise penalty: tanh(g_c / grad_scale) * exp(-sigma / noise_scale).

    sigma is :func:`noise_sigma`; g_c = sqrt(max(g^2 - (sqrt(pi)/4 * sigma)^2, 0)) is
    :func:`gradient_energy` g with the part white noise of std sigma would add removed (magnitudes
    of independent signal and noise gradients add roughly in quadrature). The first factor rewards
    edges and texture and falls with blur and downscaling; the second falls as noise is added.

    Measured on 24 faces-hq faces at 64 and 128 px (bench/reward_sensitivity.py): falls
    monotonically with white noise (every face) and Gaussian blur (96-100 % of faces), and on
    average with downscaling (67-88 % of faces individually: mild downscaling barely moves it);
    rises slightly as JPEG quality drops (0.666 -> 0.693 at 64 px, q100 -> q10: JPEG removes the
    fine grain the noise estimate sees) and with unsharp masking (0.517 -> 0.627 at 128 px).

    How it can be gamed (use it only beside full-reference fidelity terms, with a small weight):
    over-sharpening, halos and ringing raise g without adding detail; smoothing away skin texture
    while keeping strong edges lowers sigma ("plastic" faces); structured high-frequency patterns
    whose Haar-diagonal median stays small (sparse impulses, row/column stripes, hallucinated
    hair or pores) raise g without being counted as noise; higher contrast raises g. It knows
    nothing about faces or about the ground truth.

    Args:
        x: [B, 3, H, W] float in [0, 1].
        grad_scale: luma units per pixel; clean faces give g of about 0.06-0.08 at 64-128 px, so
            tanh works in its near-linear range (clean faces score 0.5-0.7).
        noise_scale: luma units; 0.25 makes noise of std 10/255 cost about 10 % while blur still
            lowers the score (smaller values let the noise factor win: blur would *raise* it,
            since blur also lowers the noise estimate).
    Returns:
        (score [B] in [0, 1), g_c [B], sigma [B]).
    """
    g = gradient_energy(x)
    sigma = noise_sigma(x)
    g_clean = torch.sqrt((g**2 - (NOISE_GRADIENT * sigma) ** 2).clamp_min(0))
    return torch.tanh(g_clean / grad_scale) * torch.exp(-sigma / noise_scale), g_clean, sigma


def _select_channels(x: Tensor, channels: str) -> Tensor:
    if channels == "rgb":
        return x
    if channels == "y":
        return luminance(x)
    raise ValueError(f"channels must be 'rgb' or 'y', got {channels!r}")


# ---------------------------------------------------------------------------------------------
# reward classes
# ---------------------------------------------------------------------------------------------
class SSIMReward(BaseReward):
    """SSIM(x, GT) in [-1, 1] (in practice [0, 1])."""

    name, needs_gt = "ssim", True

    def __init__(self, channels: str = "rgb", device: str = "cpu"):
        super().__init__(device)
        _select_channels(torch.zeros(1, 3, 1, 1), channels)  # validate now, not at the first call
        self.channels = channels

    def score(self, inp: RewardInput) -> RewardOutput:
        return RewardOutput(ssim(inp.images.clamp(0, 1), inp.gt.clamp(0, 1), channels=self.channels))


class MSSSIMReward(BaseReward):
    """MS-SSIM(x, GT) in [0, 1]."""

    name, needs_gt = "ms_ssim", True

    def __init__(self, channels: str = "rgb", max_scales: int = 5, device: str = "cpu"):
        super().__init__(device)
        _select_channels(torch.zeros(1, 3, 1, 1), channels)
        self.channels, self.max_scales = channels, max_scales

    def score(self, inp: RewardInput) -> RewardOutput:
        x, gt = inp.images.clamp(0, 1), inp.gt.clamp(0, 1)
        return RewardOutput(ms_ssim(x, gt, channels=self.channels, max_scales=self.max_scales))


class PSNRReward(BaseReward):
    """PSNR(x, GT) / max_db, so the score lies in [0, 1]; details: ``db`` = PSNR in dB."""

    name, needs_gt = "psnr", True

    def __init__(self, max_db: float = 50.0, device: str = "cpu"):
        super().__init__(device)
        self.max_db = max_db

    def score(self, inp: RewardInput) -> RewardOutput:
        db = psnr(inp.images.clamp(0, 1), inp.gt.clamp(0, 1), max_db=self.max_db)
        return RewardOutput(db / self.max_db, {"db": db})


class SharpnessReward(BaseReward):
    """No-reference :func:`sharpness_score`; details: ``gradient`` and ``noise`` (sigma)."""

    name, needs_gt = "sharpness", False

    def __init__(self, grad_scale: float = 0.1, noise_scale: float = 0.25, device: str = "cpu"):
        super().__init__(device)
        if not (grad_scale > 0 and noise_scale > 0):
            raise ValueError(f"SharpnessReward: scales must be > 0, got {grad_scale}, {noise_scale}")
        self.grad_scale, self.noise_scale = grad_scale, noise_scale

    def score(self, inp: RewardInput) -> RewardOutput:
        s, g, sigma = sharpness_score(inp.images.clamp(0, 1), self.grad_scale, self.noise_scale)
        return RewardOutput(s, {"gradient": g, "noise": sigma})


class BrightnessReward(BaseReward):
    """Mean pixel value in [0, 1]: a sanity reward any policy can learn quickly (brighter = better)."""

    name, needs_gt = "brightness", False

    def score(self, inp: RewardInput) -> RewardOutput:
        return RewardOutput(inp.images.clamp(0, 1).flatten(1).mean(1))


register_reward("ssim", SSIMReward)
register_reward("ms_ssim", MSSSIMReward)
register_reward("psnr", PSNRReward)
register_reward("sharpness", SharpnessReward)
register_reward("brightness", BrightnessReward)
