"""PSNR and SSIM (lrpo.eval.metrics) against hand values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrpo.eval.metrics import psnr, ssim
from lrpo.rewards.simple import gaussian_window

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(seed: int, shape=(2, 3, 24, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    """x: smooth image + texture in [0, 1]; y: x plus noise, clipped. Correlated, so SSIM is far from 0."""
    rng = np.random.default_rng(seed)
    b, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 3, (b, c, 1, 1))) * np.cos(4 * yy)
    x = np.clip(base + 0.1 * rng.standard_normal(shape), 0, 1)
    y = np.clip(x + rng.uniform(0.02, 0.2) * rng.standard_normal(shape), 0, 1)
    return torch.from_numpy(x), torch.from_numpy(y)


def _sk_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """skimage SSIM of one [C,H,W] image pair with the settings lrpo.eval.metrics documents."""
    return skimage_metrics.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=0
    )


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
def test_psnr_hand_value():
    # every pixel off by 0.1: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB
    x = torch.full((1, 3, 4, 4), 0.5)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    # data_range 255, every pixel off by 255/10: the same 20 dB
    assert psnr(x * 255, x * 255 + 25.5, data_range=255.0).item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_matches_skimage(seed):
    x, y = _pair(seed)
    ours = psnr(x, y)
    assert ours.shape == (2,)
    for i in range(2):
        ref = skimage_metrics.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-4)


def test_psnr_of_identical_images_is_large_and_finite():
    x, _ = _pair(3)
    value = psnr(x, x)
    # MSE 0 meets eps = 1e-12: 10 log10(1 / 1e-12) = 120 dB, finite so means over a set stay finite
    assert torch.isfinite(value).all()
    assert value.min().item() == pytest.approx(120.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------
def test_gaussian_window_is_normalised_and_symmetric():
    g = gaussian_window(1.5)  # radius int(3.5 * 1.5 + 0.5) = 5: 11 taps
    assert g.shape == (11,)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(g, g.flip(0))
    # ratio of the centre to its neighbour: exp(1 / (2 * 1.5^2)) = exp(0.2222)
    assert (g[5] / g[4]).item() == pytest.approx(math.exp(1 / 4.5), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_skimage_on_correlated_images(seed):
    x, y = _pair(seed)
    ours = ssim(x, y)
    assert ours.shape == (2,)
    for i in range(2):
        ref = _sk_ssim(x[i].numpy(), y[i].numpy())
        assert 0.1 < ref < 0.99  # a discriminating case, not a degenerate 0 or 1
        # float32 filtering vs skimage's float64: observed differences are below 5e-7
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_matches_skimage_on_independent_noise():
    rng = np.random.default_rng(7)
    x = rng.random((1, 3, 16, 16))
    y = rng.random((1, 3, 16, 16))
    ours = ssim(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert ours == pytest.approx(_sk_ssim(x[0], y[0]), abs=1e-4)


def test_ssim_single_channel_matches_skimage():
    x, y = _pair(4, shape=(1, 1, 15, 13))
    ref = skimage_metrics.structural_similarity(
        x[0, 0].numpy(), y[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-4)


def test_ssim_of_identical_images_is_one():
    x, _ = _pair(5)
    # (2 mu^2 + C1)(2 var + C2) / ((2 mu^2 + C1)(2 var + C2)) = 1 in every window
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float32), atol=1e-6)


def test_ssim_is_symmetric_and_drops_with_noise():
    x, y = _pair(6)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    rng = np.random.default_rng(0)
    noisier = (y + 0.3 * torch.from_numpy(rng.standard_normal(y.shape))).clamp(0, 1)
    assert bool((ssim(x, noisier) < ssim(x, y)).all())


def test_metrics_accept_float32_and_uint8_like_ranges():
    x, y = _pair(8)
    assert torch.allclose(ssim(x.float(), y.float()), ssim(x, y), atol=1e-5)
    # the same images in 0..255 with data_range 255 give the same numbers
    assert torch.allclose(ssim(x * 255, y * 255, data_range=255.0), ssim(x, y), atol=1e-4)
    assert torch.allclose(psnr(x * 255, y * 255, data_range=255.0), psnr(x, y), atol=1e-4)
