"""PSNR / SSIM as the field defines them (BasicSR's calculate_psnr / calculate_ssim: 8-bit images,
crop_border, RGB or BT.601 Y) against scikit-image and hand values, and the definitions written
into every report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrpo.eval.metrics import METRIC_DEFINITIONS, crop, definitions_for, psnr, quantise_8bit, ssim, to_y

skimage_metrics = pytest.importorskip("skimage.metrics")


def _u8_pair(seed: int, h: int = 40, w: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated RGB uint8 images (a smooth scene and a noisy copy)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 128 + 80 * np.sin(5 * xx[..., None] + rng.uniform(0, 3, 3)) * np.cos(3 * yy[..., None])
    a = np.clip(np.round(base + 10 * rng.standard_normal((h, w, 3))), 0, 255).astype(np.uint8)
    b = np.clip(np.round(a + 12 * rng.standard_normal(a.shape)), 0, 255).astype(np.uint8)
    return a, b


def _t(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double() / 255


def _y255(rgb: np.ndarray) -> np.ndarray:
    """BasicSR's to_y_channel in numpy: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, unrounded."""
    return 16 + rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255


def _sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis=None) -> float:
    return skimage_metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                 data_range=255, channel_axis=channel_axis)


@pytest.mark.parametrize("seed", [0, 1])
def test_rgb_psnr_and_ssim_equal_skimage_on_8bit_images(seed):
    a, b = _u8_pair(seed)
    assert psnr(_t(a), _t(b)).item() == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
    ref = _sk_ssim(a.astype(np.float64), b.astype(np.float64), channel_axis=2)
    assert 0.2 < ref < 0.95  # a discriminating case
    assert ssim(_t(a), _t(b)).item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("seed", [2, 3])
def test_y_channel_psnr_and_ssim_equal_skimage_on_basicsr_luma(seed):
    a, b = _u8_pair(seed)
    ya, yb = _y255(a), _y255(b)
    assert psnr(_t(a), _t(b), space="y").item() == pytest.approx(skimage_metrics.peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-4)
    assert ssim(_t(a), _t(b), space="y").item() == pytest.approx(_sk_ssim(ya, yb), abs=1e-5)
    assert psnr(_t(a), _t(b), space="y").item() != pytest.approx(psnr(_t(a), _t(b)).item(), abs=0.01)  # it is another number


def test_y_psnr_by_hand():
    # pure red against black: Y = 16 + 65.481 = 81.481 vs 16, an error of 65.481 levels everywhere, so
    # PSNR = 10 log10(255^2 / 65.481^2) = 20 log10(255 / 65.481) = 11.8086 dB; in RGB the error is 255
    # in one channel of three: MSE = 255^2 / 3, PSNR = 10 log10(3) = 4.7712 dB
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    black = np.zeros_like(red)
    assert psnr(_t(red), _t(black), space="y").item() == pytest.approx(20 * math.log10(255 / 65.481), abs=1e-6)
    assert psnr(_t(red), _t(black)).item() == pytest.approx(10 * math.log10(3), abs=1e-6)
    # Y of white is 235 / 255, of black 16 / 255 (the studio range)
    assert to_y(_t(np.full((1, 1, 3), 255, np.uint8))).item() == pytest.approx(235 / 255)


def test_crop_border_drops_the_edges():
    a, b = _u8_pair(4)
    cropped = psnr(_t(a[4:-4, 4:-4]), _t(b[4:-4, 4:-4])).item()
    assert psnr(_t(a), _t(b), crop_border=4).item() == pytest.approx(cropped, abs=1e-9)
    assert ssim(_t(a), _t(b), crop_border=4).item() == pytest.approx(ssim(_t(a[4:-4, 4:-4]), _t(b[4:-4, 4:-4])).item(), abs=1e-7)
    assert crop(torch.zeros(1, 3, 10, 10), 0).shape == (1, 3, 10, 10)
    with pytest.raises(ValueError, match="crop_border"):
        crop(torch.zeros(1, 3, 10, 10), -1)
    with pytest.raises(ValueError, match="space"):
        psnr(_t(a), _t(b), space="lab")


def test_quantise_8bit():
    # 0.201 * 255 = 51.255 -> level 51; values outside [0, 1] are clamped first
    x = torch.tensor([0.201, -0.2, 1.7])
    assert torch.allclose(quantise_8bit(x), torch.tensor([51 / 255, 0.0, 1.0]))


def test_definitions_say_how_and_whether_comparable():
    d = definitions_for(["psnr", "id_deg", "lmd", "niqe", "reward/total", "mystery"], space="y", crop_border=2, niqe_channel="gray")
    assert "Y channel" in d["psnr"]["definition"] and "crop_border 2" in d["psnr"]["definition"]
    assert d["psnr"]["comparable"] == "yes"
    assert d["id_deg"]["comparable"] == "no" and "SFace" in d["id_deg"]["definition"] and "ArcFace" in d["id_deg"]["note"]
    assert d["lmd"]["comparable"] == "no" and "YuNet" in d["lmd"]["definition"]
    assert "rgb2gray" in d["niqe"]["definition"]
    assert d["reward/total"]["comparable"] == "no" and d["mystery"]["note"] == "no definition recorded"
    for key, definition in METRIC_DEFINITIONS.items():  # every entry is complete
        assert definition.comparable in ("yes", "partly", "no"), key
        assert definition.comparable == "yes" or definition.note, f"{key}: say why it is not comparable"
