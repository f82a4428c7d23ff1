"""DiffBIR's wavelet colour fix on inputs whose answer is known by hand."""

import pytest
import torch

from lrpo.policies.colorfix import binomial_blur, wavelet_color_fix, wavelet_decompose


def test_blur_of_an_impulse_is_the_kernel():
    # 5x5 image, 16 at the centre. Radius 1: a pixel receives 16 * (its kernel weight for the
    # centre): centre 4/16 -> 4, edge neighbours 2/16 -> 2, diagonal neighbours 1/16 -> 1, and
    # pixels two away never see the centre -> 0 (their replicate padding copies zeros).
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 16.0
    out = binomial_blur(img, 1)[0, 0]
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # radius 2 spreads the same weights two pixels apart: (0, 0) is a diagonal tap of the centre
    out2 = binomial_blur(img, 2)[0, 0]
    assert out2[0, 0].item() == pytest.approx(1.0)
    assert out2[2, 0].item() == pytest.approx(2.0)
    assert out2[1, 1].item() == 0.0


def test_constant_reference_colour_replaces_a_constant_output():
    # the kernel sums to 1 and padding replicates: a constant image is its own low band, so
    # high(output) = 0 and the result is exactly the reference colour
    out = torch.empty(2, 3, 40, 40)
    out[:, 0], out[:, 1], out[:, 2] = 0.9, 0.1, 0.5
    ref = torch.empty_like(out)
    ref[:, 0], ref[:, 1], ref[:, 2] = 0.2, 0.3, 0.4
    fixed = wavelet_color_fix(out, ref)
    torch.testing.assert_close(fixed, ref, rtol=0, atol=1e-6)


def test_checkerboard_detail_is_kept_and_its_mean_colour_replaced():
    # [1, 2, 1] / 4 annihilates +a, -a, +a, ...: (-a + 2a - a) / 4 = 0, so a pixel checkerboard has
    # no low band. The replicate border breaks the alternation within 1 + 2 + 4 + 8 + 16 = 31
    # pixels of an edge; beyond that, fix(m + checker, c) = checker + c exactly.
    n = 128
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    checker = 0.25 * (1 - 2 * ((yy + xx) % 2)).float()  # +-0.25
    out = (0.5 + checker).expand(1, 3, n, n).clone()
    ref = torch.full((1, 3, n, n), 0.7)
    fixed = wavelet_color_fix(out, ref)
    inner = slice(32, n - 32)
    torch.testing.assert_close(fixed[..., inner, inner], (0.7 + checker).expand(1, 3, n, n)[..., inner, inner], rtol=0, atol=1e-5)
    # the band split itself: the checkerboard is all "high"
    high, low = wavelet_decompose(out)
    torch.testing.assert_close(low[..., inner, inner], torch.full_like(low[..., inner, inner], 0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(high + low, out, rtol=0, atol=1e-6)


def test_fix_with_itself_is_identity_and_dtype_is_kept():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 33, 47, generator=g)  # odd sizes: no size assumption
    torch.testing.assert_close(wavelet_color_fix(x, x), x, rtol=0, atol=1e-6)
    assert wavelet_color_fix(x.to(torch.bfloat16), x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        wavelet_color_fix(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))
