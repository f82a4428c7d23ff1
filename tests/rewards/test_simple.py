"""lrpo.rewards.simple: SSIM (vs scikit-image), MS-SSIM, PSNR, noise/sharpness estimates, brightness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrpo.rewards import RewardInput, build_reward
from lrpo.rewards.simple import (
    NOISE_GRADIENT,
    gaussian_window,
    gradient_energy,
    luminance,
    ms_ssim,
    noise_sigma,
    psnr,
    sharpness_score,
    ssim,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _smooth_image(b=2, size=64, seed=0, dtype=torch.float32):
    """Random but image-like (spatially correlated) test pictures in [0, 1]."""
    x = torch.rand(b, 3, size // 8, size // 8, generator=_gen(seed), dtype=dtype)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(0, 1)


def _blur(x, sigma):
    taps = gaussian_window(sigma, dtype=x.dtype)
    k = taps.numel()
    c = x.shape[1]
    x = F.pad(x, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _noisy(x, sigma, seed=1):
    return (x + sigma * torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------
def test_gaussian_window_matches_scipy_rule():
    # radius int(3.5 * 1.5 + 0.5) = 5: 11 taps, normalised, symmetric, peak in the middle
    w = gaussian_window(1.5)
    assert w.numel() == 11 and math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(w, w.flip(0))
    assert w.argmax().item() == 5


@pytest.mark.parametrize("channels", ["rgb", "y"])
def test_ssim_matches_skimage(channels):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (test-only reference) is not installed")
    x = _smooth_image(2, 48, seed=2, dtype=torch.float64)
    y = _noisy(x, 0.08, seed=3)
    ours = ssim(x, y, channels=channels)
    for i in range(2):
        if channels == "rgb":
            a, b, axis = x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), 2
        else:
            a, b, axis = luminance(x[i : i + 1])[0, 0].numpy(), luminance(y[i : i + 1])[0, 0].numpy(), None
        ref = metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=axis
        )
        assert abs(ours[i].item() - ref) < 1e-4, (ours[i].item(), ref)


def test_ssim_float32_matches_float64_to_1e4():
    x = _smooth_image(2, 48, seed=4, dtype=torch.float64)
    y = _noisy(x, 0.05)
    assert (ssim(x.float(), y.float()).double() - ssim(x, y)).abs().max() < 1e-4


def test_ssim_identical_is_one_and_falls_with_noise():
    x = _smooth_image()
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(2))
    scores = [ssim(_noisy(x, s), x) for s in (0.01, 0.03, 0.1)]
    assert (scores[0] > scores[1]).all() and (scores[1] > scores[2]).all()


def test_ssim_rejects_tiny_images_and_bad_channels():
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channels must be"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), channels="lab")


# ---------------------------------------------------------------------------------------------
# MS-SSIM
# ---------------------------------------------------------------------------------------------
def test_ms_ssim_identical_is_one_and_orders_degradations():
    x = _smooth_image(2, 64)
    torch.testing.assert_close(ms_ssim(x, x.clone()), torch.ones(2))
    mild, strong = ms_ssim(_noisy(x, 0.02), x), ms_ssim(_noisy(x, 0.1), x)
    assert (strong < mild).all() and (mild < 1).all()


def test_ms_ssim_with_one_scale_is_ssim():
    # 16 px: floor(log2(16 / 11)) + 1 = 1 scale, whose (renormalised) weight is 1: plain SSIM
    x = _smooth_image(2, 16, seed=5)
    y = _noisy(x, 0.05)
    torch.testing.assert_close(ms_ssim(x, y), ssim(x, y))


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
def test_psnr_hand_values():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)
    # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0))
    # identical: capped
    torch.testing.assert_close(psnr(x, x, max_db=60.0), torch.full((2,), 60.0))


def test_psnr_reward_is_normalised():
    x = torch.zeros(1, 3, 16, 16)
    out = build_reward("psnr", max_db=50.0)(RewardInput(x + 0.1, gt=x))
    torch.testing.assert_close(out.details["db"], torch.tensor([20.0]))
    torch.testing.assert_close(out.scores, torch.tensor([0.4]))


# ---------------------------------------------------------------------------------------------
# noise and sharpness
# ---------------------------------------------------------------------------------------------
def test_noise_sigma_of_white_noise_on_a_flat_image():
    # on a flat grey image the Haar HH band is pure noise with the same std (orthonormal map), so
    # median |HH| / 0.6745 estimates sigma; 4096 HH samples per image: a few % of sampling error
    sigma = 0.04
    x = (0.5 + sigma * torch.randn(2, 3, 128, 128, generator=_gen(6))).clamp(0, 1)
    # luma of independent per-channel noise has std sigma * |(0.299, 0.587, 0.114)|
    expected = sigma * math.sqrt(0.299**2 + 0.587**2 + 0.114**2)
    est = noise_sigma(x)
    assert ((est - expected).abs() / expected < 0.05).all(), (est, expected)


def test_noise_gradient_constant_matches_pure_noise():
    # gradient_energy of white noise with luma std s is sqrt(pi)/4 * s (derivation by NOISE_GRADIENT)
    x = (0.5 + 0.05 * torch.randn(1, 1, 256, 256, generator=_gen(7))).expand(1, 3, 256, 256)
    g = gradient_energy(x).item()
    assert abs(g / 0.05 - NOISE_GRADIENT) / NOISE_GRADIENT < 0.02


def test_sharpness_falls_with_blur_and_noise():
    # sharp edges (random 5x5-pixel blocks, nearest-neighbour upscaled) for blur to soften; white
    # pixel noise would not do: the term counts it as noise, and blurring it away raises the score
    blocks = torch.rand(2, 3, 26, 26, generator=_gen(8))
    x = F.interpolate(blocks, scale_factor=5, mode="nearest")[..., :128, :128]
    clean, _, _ = sharpness_score(x)
    blurred, _, _ = sharpness_score(_blur(x, 1.5))
    noisy, _, _ = sharpness_score(_noisy(x, 0.1))
    assert (blurred < clean).all() and (noisy < clean).all()


def test_sharpness_reward_reports_its_parts():
    x = _smooth_image(2, 32)
    out = build_reward("sharpness")(RewardInput(x))
    assert set(out.details) == {"gradient", "noise"}
    expected = torch.tanh(out.details["gradient"] / 0.1) * torch.exp(-out.details["noise"] / 0.25)
    torch.testing.assert_close(out.scores, expected)
    with pytest.raises(ValueError, match="scales must be > 0"):
        build_reward("sharpness", grad_scale=0.0)


# ---------------------------------------------------------------------------------------------
# brightness and registration
# ---------------------------------------------------------------------------------------------
def test_brightness_is_the_mean_pixel():
    x = torch.stack([torch.full((3, 8, 8), 0.25), torch.cat([torch.zeros(1, 8, 8), torch.ones(2, 8, 8)])])
    out = build_reward("brightness")(RewardInput(x))
    torch.testing.assert_close(out.scores, torch.tensor([0.25, 2 / 3]))


@pytest.mark.parametrize("name, needs_gt", [("ssim", True), ("ms_ssim", True), ("psnr", True), ("sharpness", False), ("brightness", False)])
def test_registered_simple_rewards(name, needs_gt):
    reward = build_reward(name)
    assert reward.name == name and reward.needs_gt == needs_gt
    x = _smooth_image(2, 32)
    out = reward(RewardInput(x, gt=x.clone()))
    assert out.scores.shape == (2,) and torch.isfinite(out.scores).all()
    if needs_gt:  # a perfect output gets the top score
        torch.testing.assert_close(out.scores, torch.ones(2))


def test_ssim_reward_on_luma():
    x = _smooth_image(2, 32, dtype=torch.float32)
    y = _noisy(x, 0.05)
    out = build_reward("ssim", channels="y")(RewardInput(y, gt=x))
    torch.testing.assert_close(out.scores, ssim(y, x, channels="y"))
    assert np.all(out.scores.numpy() < 1)
