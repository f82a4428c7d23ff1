"""Tests of lrpo.degradation: kernels, ops, the pipeline against OpenCV, paired sets, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lrpo.config import DEGRADATION_PRESETS, DegradationConfig
from lrpo.data.images import ImageLoadError, load_rgb, save_rgb, to_tensor, to_uint8
from lrpo.degradation import (
    DegradationParams,
    add_degrade_arguments,
    add_gaussian_noise,
    blur,
    degrade,
    degrade_cv2,
    degrade_group,
    gaussian_kernel,
    gaussian_kernel_np,
    gaussian_kernels,
    image_seed,
    jpeg_decode_rgb,
    jpeg_encode_rgb,
    make_paired_set,
    read_params_jsonl,
    reflect101_pad,
    resize_bilinear,
    run_degrade,
    sample_params,
    scaled_size,
)
from lrpo.degradation.ops import fast_fft_len, reflect101_indices
from lrpo.degradation.pipeline import _finish_opencv, _finish_torch, _small_lq_opencv, _small_lq_torch
from lrpo.manifest import MANIFEST_NAME, read_manifest
from lrpo.outputs import KIND_FILE, OutputError

CFG = DegradationConfig()


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def synthetic_faces(n: int, size: int, seed: int = 0, width: int | None = None) -> torch.Tensor:
    """float32 [n, 3, size, width] in [0, 1]: colour gradients plus a mostly grey random texture.

    The texture is shared by the channels (plus a little colour) so that JPEG's 4:2:0 chroma
    subsampling does not by itself cap the PSNR of a near-identity degradation.
    """
    width = size if width is None else width
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * torch.sin(6 * xx + 3 * yy)])
    grey = torch.rand((n, 1, size, width), generator=g) - 0.5
    colour = torch.rand((n, 3, size, width), generator=g) - 0.5
    return (base + 0.2 * grey + 0.03 * colour).clamp(0, 1)


def params(kernel="iso", sx=0.1, sy=None, angle=0.0, scale=1.0, noise=0.0, quality=100) -> DegradationParams:
    return DegradationParams(kernel, sx, sx if sy is None else sy, angle, scale, noise, quality)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(1.0 / mse)


def high_freq_energy(x: torch.Tensor) -> float:
    """Energy of the spectrum above 0.25 cycles/pixel (per axis max) of a [.., H, W] image.

    A Hann window first: without it the jump between opposite borders of the (non-periodic)
    image puts broadband energy in every spectrum, blurred or not.
    """
    x = x.double() - x.double().mean(dim=(-2, -1), keepdim=True)
    x = x * torch.outer(torch.hann_window(x.shape[-2], periodic=False, dtype=torch.float64),
                        torch.hann_window(x.shape[-1], periodic=False, dtype=torch.float64))
    spec = torch.fft.fft2(x)
    fy = torch.fft.fftfreq(x.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).abs().view(1, -1)
    mask = torch.maximum(fy, fx) > 0.25
    return float((spec.abs() ** 2)[..., mask].sum())


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
def test_kernel_3x3_value_by_hand():
    # sigma 1, size 3: weights 1 (centre), e^-0.5 (4 edges), e^-1 (4 corners);
    # Z = 1 + 4 * 0.60653066 + 4 * 0.36787944 = 4.89764040 -> centre 0.20417996
    k = gaussian_kernel(3, 1.0, 1.0, 0.0, dtype=torch.float64)
    assert k[1, 1].item() == pytest.approx(1 / 4.89764040, abs=1e-8)
    assert k[0, 1].item() == pytest.approx(math.exp(-0.5) / 4.89764040, abs=1e-8)
    assert k[0, 0].item() == pytest.approx(math.exp(-1.0) / 4.89764040, abs=1e-8)


@pytest.mark.parametrize("sx,sy,theta", [(0.1, 0.1, 0.0), (1.5, 1.5, 0.0), (12.0, 12.0, 0.0), (0.5, 9.0, 0.3), (12.0, 0.1, -2.0)])
def test_kernel_sums_to_one_and_is_point_symmetric(sx, sy, theta):
    k = gaussian_kernel(41, sx, sy, theta)
    assert k.shape == (41, 41) and k.dtype == torch.float32
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool((k >= 0).all())
    # K(-x, -y) = K(x, y): the quadratic form is even
    torch.testing.assert_close(k, k.flip(0, 1), atol=1e-9, rtol=0)
    # theta and theta + pi describe the same axes
    torch.testing.assert_close(k, gaussian_kernel(41, sx, sy, theta + math.pi), atol=1e-7, rtol=0)


def test_isotropic_kernel_is_outer_product_of_1d_gaussians():
    # exp(-(x^2 + y^2) / 2s^2) = exp(-x^2/2s^2) exp(-y^2/2s^2) and the normaliser factorises too
    s = 2.3
    x = torch.arange(-10, 11, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * s * s))
    g = g / g.sum()
    torch.testing.assert_close(gaussian_kernel(21, s, s, 0.0, dtype=torch.float64), torch.outer(g, g), atol=1e-12, rtol=0)
    # and rotation-invariant: u^2 + v^2 = x^2 + y^2
    torch.testing.assert_close(gaussian_kernel(21, s, s, 0.7, dtype=torch.float64), torch.outer(g, g), atol=1e-12, rtol=0)


def test_axis_aligned_kernel_orientation():
    # theta = 0: sigma_x acts along columns (x), sigma_y along rows (y): K = outer(g_sy, g_sx)
    x = torch.arange(-7, 8, dtype=torch.float64)
    gx = torch.exp(-(x**2) / (2 * 1.0**2))
    gy = torch.exp(-(x**2) / (2 * 3.0**2))
    expected = torch.outer(gy / gy.sum(), gx / gx.sum())
    torch.testing.assert_close(gaussian_kernel(15, 1.0, 3.0, 0.0, dtype=torch.float64), expected, atol=1e-12, rtol=0)


def test_rotation_by_half_pi_swaps_sigmas():
    # theta = pi/2: (u, v) = (y, -x), so q = y^2/sx^2 + x^2/sy^2 = the theta = 0 kernel with sx, sy swapped
    a = gaussian_kernel(41, 2.0, 7.0, math.pi / 2, dtype=torch.float64)
    b = gaussian_kernel(41, 7.0, 2.0, 0.0, dtype=torch.float64)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # and its transpose: swapping x and y swaps the roles of the two sigmas
    torch.testing.assert_close(a, gaussian_kernel(41, 2.0, 7.0, 0.0, dtype=torch.float64).T, atol=1e-12, rtol=0)


def test_batched_kernels_match_single_and_numpy_reference():
    sx = torch.tensor([0.1, 3.0, 11.0])
    sy = torch.tensor([0.1, 0.7, 4.0])
    th = torch.tensor([0.0, 1.1, -2.5])
    batch = gaussian_kernels(41, sx, sy, th)
    assert batch.shape == (3, 41, 41)
    for i in range(3):
        single = gaussian_kernel(41, float(sx[i]), float(sy[i]), float(th[i]))
        torch.testing.assert_close(batch[i], single, atol=0, rtol=0)
        ref = torch.from_numpy(gaussian_kernel_np(41, float(sx[i]), float(sy[i]), float(th[i])))
        torch.testing.assert_close(batch[i], ref, atol=1e-7, rtol=0)


def test_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(40, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="> 0"):
        gaussian_kernel(5, 0.0, 1.0, 0.0)


# ----------------------------------------------------------------------------------------------
# ops
# ----------------------------------------------------------------------------------------------
def test_reflect101_indices_by_hand():
    # abcd padded by 2: c b | a b c d | c b
    assert reflect101_indices(4, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    # pad wider than the image: the reflection repeats with period 2n - 2 = 4
    assert reflect101_indices(3, 5).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]
    assert reflect101_indices(1, 2).tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("h,w,pad", [(9, 7, 3), (6, 5, 20)])
def test_reflect101_pad_matches_cv2(h, w, pad):
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    ref = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    ours = reflect101_pad(torch.from_numpy(img).permute(2, 0, 1)[None], pad)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_fast_fft_len():
    assert fast_fft_len(552) == 576  # 552 = 2^3 * 3 * 23; 576 = 2^6 * 3^2
    assert fast_fft_len(104) == 108  # 104 = 2^3 * 13; 108 = 2^2 * 3^3
    assert fast_fft_len(7) == 8 and fast_fft_len(1) == 1 and fast_fft_len(125) == 125


@pytest.mark.parametrize("h,w,k", [(40, 50, 41), (12, 10, 41), (33, 33, 7)])
def test_blur_matches_cv2_filter2d(h, w, k):
    # a non-symmetric random kernel: checks correlation (not convolution) and the border rule;
    # float32 FFT vs cv2's float32 filter: agreement to ~1e-6 of a [0, 1] signal
    rng = np.random.default_rng(1)
    img = rng.random((h, w, 3), dtype=np.float32)
    ker = rng.random((k, k), dtype=np.float32)
    ker /= ker.sum()
    ref = cv2.filter2D(img, -1, ker, borderType=cv2.BORDER_REFLECT_101)
    ours = blur(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(ker)[None])
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), ref, atol=5e-6, rtol=0)


def test_blur_reduces_high_frequency_energy():
    # Gaussian transfer exp(-2 pi^2 sigma^2 f^2): for sigma = 2 at f = 0.25 it is 0.0072, so the
    # energy above f = 0.25 must fall by at least 0.0072^2 = 5e-5 (measured: 4e-7)
    x = synthetic_faces(1, 64)
    k = gaussian_kernel(41, 2.0, 2.0, 0.0)[None]
    ratio = high_freq_energy(blur(x, k)) / high_freq_energy(x)
    assert ratio < 5.2e-5


@pytest.mark.parametrize("src,dst", [((64, 64), (13, 13)), ((64, 48), (7, 5)), ((13, 11), (64, 64)), ((96, 96), (48, 48))])
def test_resize_bilinear_matches_cv2_inter_linear(src, dst):
    img = np.random.default_rng(2).random((*src, 3), dtype=np.float32)
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    ours = resize_bilinear(torch.from_numpy(img).permute(2, 0, 1)[None], dst)[0].permute(1, 2, 0).numpy()
    # cv2 computes the interpolation weights in float32, torch partly in higher precision: a few
    # 1e-6 apart on [0, 1] values
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_scaled_size_rounds_half_up_and_keeps_one_pixel():
    assert scaled_size(512, 512, 12.0) == (43, 43)  # 42.67
    assert scaled_size(10, 6, 4.0) == (3, 2)  # 2.5 -> 3, 1.5 -> 2
    assert scaled_size(3, 3, 12.0) == (1, 1)  # 0.25 -> 0 -> at least 1
    assert scaled_size(64, 64, 1.0) == (64, 64)


def test_noise_statistics_and_zero_sigma_draws_nothing():
    x = torch.full((1, 3, 200, 200), 0.5)
    g = torch.Generator().manual_seed(0)
    y = add_gaussian_noise(x, 15.0, g) - 0.5
    # sample std of 120000 normals: relative standard error 1/sqrt(2N) = 0.2%; allow 1%
    assert float(y.std()) == pytest.approx(15.0 / 255.0, rel=0.01)
    # independent channels: correlation of 40000 pairs has standard error 0.005; allow 0.025
    c = torch.corrcoef(y[0].reshape(3, -1))
    assert float((c - torch.eye(3)).abs().max()) < 0.025
    state = g.get_state()
    torch.testing.assert_close(add_gaussian_noise(x, 0.0, g), x, atol=0, rtol=0)
    assert torch.equal(g.get_state(), state)


def test_jpeg_keeps_rgb_order_in_the_file():
    # a red image must decode as red with an independent decoder (PIL reads the file as RGB);
    # without the RGB->BGR flip the file would hold a blue image
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 220
    pil = np.asarray(Image.open(io.BytesIO(jpeg_encode_rgb(rgb, 90))).convert("RGB"))
    assert pil[..., 0].mean() > 200 and pil[..., 2].mean() < 20
    ours = jpeg_decode_rgb(jpeg_encode_rgb(rgb, 90))
    assert ours[..., 0].mean() > 200 and ours[..., 2].mean() < 20


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
def test_sample_params_ranges_over_many_draws():
    ps = sample_params(CFG, torch.Generator().manual_seed(0), 2000)
    iso = [p for p in ps if p.kernel == "iso"]
    # isotropic share: binomial(2000, 0.5) has standard error 0.011; allow 0.05
    assert abs(len(iso) / 2000 - 0.5) < 0.05
    assert all(p.sigma_x == p.sigma_y and p.angle == 0.0 for p in iso)
    assert any(p.sigma_x != p.sigma_y for p in ps if p.kernel == "aniso")
    for p in ps:
        assert 0.1 <= p.sigma_x <= 12.0 and 0.1 <= p.sigma_y <= 12.0
        assert -math.pi <= p.angle <= math.pi
        assert 1.0 <= p.scale <= 12.0
        assert 0.0 <= p.noise_sigma <= 15.0
        assert isinstance(p.jpeg_quality, int) and 30 <= p.jpeg_quality <= 99
    qualities = {p.jpeg_quality for p in ps}
    # inclusive ends: P(an end never drawn in 2000 draws of 70 values) = (69/70)^2000 ~ 3e-13
    assert min(qualities) == 30 and max(qualities) == 99
    # mean of U[1, 12] is 6.5, standard error 3.18 / sqrt(2000) = 0.071; allow 0.3
    assert abs(sum(p.scale for p in ps) / 2000 - 6.5) < 0.3


def test_sample_params_respects_isotropic_prob_and_mild_preset():
    all_iso = sample_params(dataclasses.replace(CFG, isotropic_prob=1.0), torch.Generator().manual_seed(1), 50)
    no_iso = sample_params(dataclasses.replace(CFG, isotropic_prob=0.0), torch.Generator().manual_seed(1), 50)
    assert all(p.kernel == "iso" for p in all_iso) and all(p.kernel == "aniso" for p in no_iso)
    mild = DEGRADATION_PRESETS["mild"]
    for p in sample_params(mild, torch.Generator().manual_seed(2), 300):
        assert p.sigma_x <= 3.0 and p.scale <= 4.0 and p.noise_sigma <= 5.0 and p.jpeg_quality >= 60


def test_sample_params_uses_only_the_generator():
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(1)
    a = sample_params(CFG, torch.Generator().manual_seed(5), 10)
    assert torch.equal(torch.rand(1), expected_next)  # global torch RNG untouched
    np.random.seed(2)
    random.seed(2)
    b = sample_params(CFG, torch.Generator().manual_seed(5), 10)
    assert a == b


def test_params_dict_round_trip_and_validation():
    p = params("aniso", 1.5, 4.0, 0.3, 2.5, 7.0, 55)
    d = p.to_dict()
    assert list(d) == ["kernel", "sigma_x", "sigma_y", "angle", "scale", "noise_sigma", "jpeg_quality"]
    assert DegradationParams.from_dict(json.loads(json.dumps(d))) == p
    with pytest.raises(ValueError, match="unknown keys \\['blur'\\]"):
        DegradationParams.from_dict({**d, "blur": 1})
    with pytest.raises(ValueError, match="missing keys \\['scale'\\]"):
        DegradationParams.from_dict({k: v for k, v in d.items() if k != "scale"})
    with pytest.raises(ValueError, match="iso"):
        params("iso", 1.0, 2.0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        params(quality=0)


# ----------------------------------------------------------------------------------------------
# pipeline
# ----------------------------------------------------------------------------------------------
def test_degrade_shape_range_dtype():
    hq = synthetic_faces(3, 64).double()
    lq, ps = degrade(hq, CFG, torch.Generator().manual_seed(0))
    assert lq.shape == (3, 3, 64, 64) and lq.dtype == torch.float32 and len(ps) == 3
    assert float(lq.min()) >= 0.0 and float(lq.max()) <= 1.0
    lq, _ = degrade(hq[:2], CFG, torch.Generator().manual_seed(0), out_size=96)
    assert lq.shape == (2, 3, 96, 96)
    lq, _ = degrade(synthetic_faces(1, 48, width=40), CFG, torch.Generator().manual_seed(0))
    assert lq.shape == (1, 3, 48, 40)


def test_degrade_reproducible_for_a_seed_and_different_across_seeds():
    hq = synthetic_faces(2, 64)
    a, pa = degrade(hq, CFG, torch.Generator().manual_seed(3))
    b, pb = degrade(hq, CFG, torch.Generator().manual_seed(3))
    c, pc = degrade(hq, CFG, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and pa == pb
    assert pa != pc and not torch.equal(a, c)


def test_degrade_replays_params_and_noise_comes_from_the_generator():
    hq = synthetic_faces(1, 64)
    p = [params("aniso", 2.0, 0.5, 1.0, 2.0, 10.0, 70)]
    a, used = degrade(hq, CFG, torch.Generator().manual_seed(0), params=p)
    b, _ = degrade(hq, CFG, torch.Generator().manual_seed(0), params=p)
    c, _ = degrade(hq, CFG, torch.Generator().manual_seed(1), params=p)
    assert used == p and torch.equal(a, b) and not torch.equal(a, c)


def test_near_identity_degradation_keeps_the_image():
    # sigma 0.1: neighbour weight exp(-50) ~ 2e-22, i.e. no blur; scale 1, no noise; the only loss
    # is uint8 quantisation and JPEG at quality 100 (4:2:0 chroma), far above 35 dB
    hq = synthetic_faces(2, 64)
    lq, _ = degrade(hq, CFG, torch.Generator().manual_seed(0), params=[params(quality=100)] * 2)
    assert psnr(lq, hq) > 35.0


def test_pipeline_blur_reduces_high_frequencies():
    hq = synthetic_faces(1, 64)
    sharp, _ = degrade(hq, CFG, torch.Generator().manual_seed(0), params=[params(sx=0.1, quality=95)])
    blurred, _ = degrade(hq, CFG, torch.Generator().manual_seed(0), params=[params(sx=2.0, quality=95)])
    # the blur alone cuts HF energy by > 1e4 (test_blur_reduces_high_frequency_energy); what is
    # left is uint8/JPEG error: white rounding noise of variance (1/255)^2/12 against the texture's
    # 0.2^2/12 is a floor of ~1/2600 = 4e-4 (measured ratio: 2e-3 with JPEG at quality 95)
    assert high_freq_energy(blurred) < 0.01 * high_freq_energy(sharp)


def test_degrade_group_copies_are_identical():
    hq = synthetic_faces(1, 64)[0]
    p = params("aniso", 1.0, 3.0, 0.5, 3.0, 12.0, 50)  # with noise: the realisation must be shared
    lq, used = degrade_group(hq, 9, CFG, torch.Generator().manual_seed(0), params=p)
    assert lq.shape == (9, 3, 64, 64) and used == p
    assert all(torch.equal(lq[0], lq[i]) for i in range(1, 9))
    lq[0].zero_()  # materialised copies: editing one member leaves the others alone
    assert float(lq[1].abs().sum()) > 0
    # sampled parameters too
    lq, used = degrade_group(hq, 3, CFG, torch.Generator().manual_seed(1))
    assert isinstance(used, DegradationParams) and torch.equal(lq[0], lq[2])


def test_per_sample_generators_make_results_independent_of_batching():
    hq = synthetic_faces(3, 64)
    batched, pb = degrade(hq, CFG, [torch.Generator().manual_seed(s) for s in (10, 11, 12)])
    for i, s in enumerate((10, 11, 12)):
        alone, pa = degrade(hq[i : i + 1], CFG, [torch.Generator().manual_seed(s)])
        assert pa[0] == pb[i]
        # the batched and single FFTs may differ by float rounding (~1e-7), which can flip a
        # uint8 rounding before JPEG at rare pixels; allow one such flip's effect
        assert float((alone[0] - batched[i]).abs().mean()) < 1e-4
        assert float((alone[0] - batched[i]).abs().max()) <= 4 / 255


CV2_CASES = [
    params("iso", 0.1, scale=1.0, quality=95),
    params("iso", 3.0, scale=2.0, quality=70),
    params("aniso", 0.8, 6.0, 0.9, scale=3.7, quality=40),
    params("aniso", 12.0, 0.3, -2.8, scale=12.0, quality=30),
    params("iso", 1.7, scale=5.3, quality=99),
]


def _levels_flipped(a: np.ndarray, b: np.ndarray) -> int:
    """Count uint8 values that differ; assert no difference exceeds one level."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert d.max() <= 1
    return int(d.sum())


@pytest.mark.parametrize("p", CV2_CASES, ids=lambda p: f"{p.kernel}-s{p.scale}-q{p.jpeg_quality}")
def test_torch_pipeline_matches_opencv_reference(p):
    # Same params, zero noise. The only numerical difference is the blur (float32 FFT vs cv2's
    # float32 filter, ~1e-6 apart); the resizes, JPEG and quantisation then run the same OpenCV
    # code. So the outputs are equal to float rounding (1e-5) unless a blur difference moved
    # x * 255 across a .5 boundary before JPEG: a one-level flip at a rare pixel, which JPEG spreads
    # over its 8x8 (luma) / 16x16 (chroma) block. We check for exactly that and bound its effect.
    hq = synthetic_faces(1, 96, seed=7)
    img = hq[0].permute(1, 2, 0).numpy().copy()
    ours, _ = degrade(hq, CFG, torch.Generator().manual_seed(0), out_size=80, params=[p])
    ref = degrade_cv2(img, p, kernel_size=CFG.kernel_size, out_size=80)
    assert ref.shape == (80, 80, 3)
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)

    kernel = gaussian_kernel(CFG.kernel_size, p.sigma_x, p.sigma_y, p.angle)
    our_blur = blur(hq, kernel[None])[0]
    ref_blur = cv2.filter2D(img, -1, gaussian_kernel_np(CFG.kernel_size, p.sigma_x, p.sigma_y, p.angle),
                            borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(our_blur.permute(1, 2, 0).numpy() - ref_blur).max() < 5e-6
    h, w = scaled_size(96, 96, p.scale)
    ref_small = np.rint(np.clip(cv2.resize(ref_blur, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1) * np.float32(255))
    our_small = _small_lq_opencv(our_blur, p, torch.Generator())
    if _levels_flipped(our_small, ref_small.astype(np.uint8)) == 0:
        assert diff.max() <= 1e-5
    else:  # a flip: bounded to ~1/4 grey level on average over the image
        assert diff.mean() < 1e-3


@pytest.mark.parametrize("p", CV2_CASES + [params("aniso", 2.0, 5.0, 0.4, 2.7, 12.0, 60), params(noise=15.0, quality=30)],
                         ids=lambda p: f"{p.kernel}-s{p.scale}-n{p.noise_sigma}-q{p.jpeg_quality}")
def test_torch_and_opencv_finishing_paths_agree(p):
    # degrade() finishes each image with OpenCV on the CPU and with torch ops elsewhere (CUDA);
    # both run here on the CPU from the same blurred image and generator seed. The resizes differ
    # by float rounding (~3e-6), so: JPEG inputs equal up to rare one-level flips, outputs equal
    # to 1e-5 when there is none (same bound on a flip as in the OpenCV reference test).
    blurred = synthetic_faces(1, 96, seed=7)[0]
    torch_small = _small_lq_torch(blurred, p, torch.Generator().manual_seed(0)).permute(1, 2, 0).numpy()
    cv_small = _small_lq_opencv(blurred, p, torch.Generator().manual_seed(0))
    a = _finish_torch(blurred, p, torch.Generator().manual_seed(0), (80, 80))
    b = torch.from_numpy(_finish_opencv(blurred, p, torch.Generator().manual_seed(0), (80, 80))).permute(2, 0, 1)
    assert a.shape == b.shape == (3, 80, 80)
    flipped = _levels_flipped(torch_small, cv_small)
    assert flipped <= 0.01 * cv_small.size
    if flipped == 0:
        assert float((a - b).abs().max()) <= 1e-5
    else:
        assert float((a - b).abs().mean()) < 1e-3


def test_degrade_rejects_bad_inputs():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        degrade(synthetic_faces(1, 32)[0], CFG, g)
    with pytest.raises(ValueError, match="uint8"):
        degrade((synthetic_faces(1, 32) * 255).to(torch.uint8), CFG, g)
    with pytest.raises(ValueError, match="one per image"):
        degrade(synthetic_faces(2, 32), CFG, g, params=[params()])
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        degrade(synthetic_faces(2, 32), CFG, [g, g, g])


def test_generator_on_another_device_is_rejected():
    # no second device on a CPU machine: a "meta" tensor stands in for a GPU tensor; the device
    # check runs before any computation
    hq = torch.zeros((1, 3, 16, 16), device="meta")
    with pytest.raises(ValueError, match="generator is on cpu but the images are on meta"):
        degrade(hq, CFG, torch.Generator().manual_seed(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_and_generator_mismatch():
    hq = synthetic_faces(2, 64).cuda()
    with pytest.raises(ValueError, match="generator is on cpu"):
        degrade(hq, CFG, torch.Generator().manual_seed(0))
    lq, _ = degrade(hq, CFG, torch.Generator(device="cuda").manual_seed(0))
    assert lq.device.type == "cuda" and lq.shape == (2, 3, 64, 64)


# ----------------------------------------------------------------------------------------------
# paired sets and CLI
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def hq_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    faces = synthetic_faces(3, 80, seed=3)
    for i, face in enumerate(faces):
        save_rgb(src / f"face{i}.png", to_uint8(face))
    return src


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_paired_set_is_byte_reproducible_and_replayable(hq_dir, tmp_path):
    s1 = make_paired_set(hq_dir, tmp_path / "a", size=64, seed=5, progress=False)
    s2 = make_paired_set(hq_dir, tmp_path / "b", size=64, seed=5, progress=False)
    assert s1.written == s2.written == 3 and not s1.skipped
    files_a, files_b = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b")
    assert sorted(files_a) == [MANIFEST_NAME, KIND_FILE, "hq/face0.png", "hq/face1.png", "hq/face2.png", "lq/face0.png",
                               "lq/face1.png", "lq/face2.png", "params.jsonl"]
    assert files_a == files_b  # the manifest too: the same names, sizes and digests in the same order
    # it records every file written, with its digest, and nothing else
    recorded = read_manifest(tmp_path / "a")
    assert sorted(recorded) == sorted(set(files_a) - {MANIFEST_NAME})
    assert all(e.sha256 == hashlib.sha256(files_a[p]).hexdigest() for p, e in recorded.items())
    records = [json.loads(line) for line in (tmp_path / "a" / "params.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["face0.png", "face1.png", "face2.png"]
    assert [r["seed"] for r in records] == [image_seed(5, i) for i in range(3)]
    pairs = read_params_jsonl(tmp_path / "a" / "params.jsonl")
    # replay image 1 alone from its recorded seed: the same LQ, so nothing depended on batching
    hq = to_tensor(load_rgb(tmp_path / "a" / "hq" / "face1.png"))[None]
    assert hq.shape == (1, 3, 64, 64)
    lq, (p,) = degrade(hq, CFG, torch.Generator().manual_seed(records[1]["seed"]))
    assert p == pairs[1][1]
    np.testing.assert_array_equal(to_uint8(lq[0]), load_rgb(tmp_path / "a" / "lq" / "face1.png"))
    # another seed, other degradations
    make_paired_set(hq_dir, tmp_path / "c", size=64, seed=6, progress=False)
    assert _all_bytes(tmp_path / "c")["lq/face0.png"] != files_a["lq/face0.png"]


def test_paired_set_bad_images(hq_dir, tmp_path):
    (hq_dir / "face1b.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(ImageLoadError, match="face1b.jpg"):
        make_paired_set(hq_dir, tmp_path / "a", size=32, progress=False)
    # nothing partial is left behind, so the retry needs no --overwrite
    assert not (tmp_path / "a").exists() and [p.name for p in tmp_path.iterdir()] == [hq_dir.name]
    summary = make_paired_set(hq_dir, tmp_path / "b", size=32, progress=False, skip_bad=True)
    assert summary.written == 3 and summary.out_dir == tmp_path / "b"
    assert [Path(e.path).name for e in summary.skipped] == ["face1b.jpg"]
    assert sorted(p.name for p in (tmp_path / "b" / "lq").iterdir()) == ["face0.png", "face1.png", "face2.png"]


def test_paired_set_refuses_existing_output_unless_overwrite(hq_dir, tmp_path):
    make_paired_set(hq_dir, tmp_path / "a", size=32, progress=False)
    before = _all_bytes(tmp_path / "a")
    # an overwrite that fails on a bad input leaves the old set as it was (and no hidden work folder)
    bad = tmp_path / "with_bad"
    bad.mkdir()
    for p in hq_dir.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "zz.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError):
        make_paired_set(bad, tmp_path / "a", size=32, progress=False, overwrite=True)
    assert _all_bytes(tmp_path / "a") == before and not list((tmp_path / "a").glob(".partial-*"))
    with pytest.raises(OutputError, match="--overwrite"):
        make_paired_set(hq_dir, tmp_path / "a", size=32, progress=False)
    # a file lrpo did not write is named, kept, and stops --overwrite (it cannot tell what else is the user's)
    (tmp_path / "a" / "lq" / "stale.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="lq/stale.png"):
        make_paired_set(hq_dir, tmp_path / "a", size=32, progress=False, overwrite=True)
    assert (tmp_path / "a" / "lq" / "stale.png").read_bytes() == b"x"
    (tmp_path / "a" / "lq" / "stale.png").unlink()
    make_paired_set(hq_dir, tmp_path / "a", size=32, progress=False, overwrite=True)
    assert _all_bytes(tmp_path / "a") == before


def test_cli_entry_points(hq_dir, tmp_path, capsys):
    parser = add_degrade_arguments(argparse.ArgumentParser(prog="lrpo degrade"))
    args = parser.parse_args([str(hq_dir), str(tmp_path / "out"), "--size", "32", "--seed", "1",
                              "--preset", "mild", "--no-progress"])
    assert run_degrade(args) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
    for _, p in read_params_jsonl(tmp_path / "out" / "params.jsonl"):
        assert p.scale <= 4.0 and p.jpeg_quality >= 60  # the mild preset was used
    assert run_degrade(args) == 1  # exists, no --overwrite
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        parser.parse_args([str(hq_dir), str(tmp_path / "x"), "--preset", "harsh"])
