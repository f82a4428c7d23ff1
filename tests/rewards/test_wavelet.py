"""lrpo.rewards.wavelet: DT-CWT and Haar low-pass bands, the exp(-15 L) fidelity and its reward."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from lrpo.rewards import RewardInput, build_reward
from lrpo.rewards.wavelet import H0A_QSHIFT_B, H0O_NEAR_SYM_B, dtcwt_lowpass, dwt_fidelity, lowpass_haar


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ---------------------------------------------------------------------------------------------
# filters and DC gains
# ---------------------------------------------------------------------------------------------
def test_filter_taps_have_the_published_dc_gains():
    # near_sym_b h0o is a unit-DC-gain symmetric filter; the q-shift h0a has DC gain sqrt(2)
    assert math.isclose(sum(H0O_NEAR_SYM_B), 1.0, abs_tol=1e-12)
    assert H0O_NEAR_SYM_B == H0O_NEAR_SYM_B[::-1]
    assert math.isclose(sum(H0A_QSHIFT_B), math.sqrt(2), abs_tol=1e-12)
    # sum(h0a * h0b) > 0 is what puts tree a in the even output slots (module docstring)
    assert sum(a * b for a, b in zip(H0A_QSHIFT_B, H0A_QSHIFT_B[::-1])) > 0


@pytest.mark.parametrize("levels, gain", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
def test_dtcwt_lowpass_of_a_constant(levels, gain):
    # symmetric extension keeps a constant constant; level 1 has gain 1, each further level
    # sqrt(2) per axis = 2: so c -> 2^(J-1) c everywhere (the published q-shift taps sum to
    # sqrt(2) only to 2e-13, hence the tolerance)
    c = 0.37
    low = dtcwt_lowpass(torch.full((1, 2, 64, 48), c, dtype=torch.float64), levels)
    torch.testing.assert_close(low, torch.full_like(low, gain * c), rtol=0, atol=1e-10)


@pytest.mark.parametrize("size, expected", [((64, 64), (16, 16)), ((50, 70), (14, 18)), ((33, 47), (10, 12)), ((12, 20), (4, 6))])
def test_dtcwt_lowpass_shapes(size, expected):
    # 64 -> 64 (level 1) -> 32 -> 16; 50 -> 50 -> pad to 52 -> 26 -> pad to 28 -> 14;
    # 33 -> 34 (odd: last row repeated) -> pad 36 -> 18 -> pad 20 -> 10
    assert dtcwt_lowpass(torch.zeros(1, 1, *size), 3).shape[-2:] == expected


def test_dtcwt_lowpass_is_linear():
    a, b = _rand(1, 3, 32, 32, seed=1, dtype=torch.float64), _rand(1, 3, 32, 32, seed=2, dtype=torch.float64)
    torch.testing.assert_close(dtcwt_lowpass(2 * a - b), 2 * dtcwt_lowpass(a) - dtcwt_lowpass(b))


def _pytorch_wavelets_lowpass(x: torch.Tensor, levels: int) -> torch.Tensor:
    pw = pytest.importorskip(
        "pytorch_wavelets", reason="pytorch_wavelets (test-only reference) is not installed: pip install pytorch_wavelets==1.3.0 PyWavelets 'setuptools<81'"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # its filters are created in the default dtype: make them float64 for an exact comparison
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            xfm = pw.DTCWTForward(J=levels, biort="near_sym_b", qshift="qshift_b")
        finally:
            torch.set_default_dtype(old)
        return xfm(x)[0]


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 128, 96), (1, 2, 33, 47), (1, 1, 12, 20)])
def test_dtcwt_lowpass_matches_pytorch_wavelets(shape):
    x = _rand(*shape, seed=3, dtype=torch.float64)
    ref = _pytorch_wavelets_lowpass(x, 3)
    torch.testing.assert_close(dtcwt_lowpass(x, 3), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_dtcwt_lowpass_matches_pytorch_wavelets_other_depths_float32(levels):
    x = _rand(2, 3, 64, 64, seed=4)
    ref = _pytorch_wavelets_lowpass(x.double(), levels)
    # float32 arithmetic on values up to 2^(J-1): 1e-5 covers the rounding
    torch.testing.assert_close(dtcwt_lowpass(x, levels).double(), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Haar
# ---------------------------------------------------------------------------------------------
def test_haar_lowpass_hand_example():
    # one orthonormal Haar level: LL = (a + b + c + d) / 2; block [[1, 2], [3, 4]] -> 5
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert lowpass_haar(x, 1).item() == 5.0
    # two levels of a 4x4 ramp 0..15: 4 * mean = 4 * 7.5 = 30
    assert lowpass_haar(torch.arange(16.0).view(1, 1, 4, 4), 2).item() == 30.0


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_lowpass_of_a_constant_is_2_to_the_J_times_it(levels):
    c = 0.6
    low = lowpass_haar(torch.full((1, 3, 40, 24), c), levels)
    assert low.shape[-2:] == (math.ceil(40 / 2**levels), math.ceil(24 / 2**levels))
    torch.testing.assert_close(low, torch.full_like(low, 2**levels * c))


# ---------------------------------------------------------------------------------------------
# fidelity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dtcwt", "haar"])
def test_fidelity_of_identical_images_is_one(kind):
    x = _rand(3, 3, 32, 32)
    torch.testing.assert_close(dwt_fidelity(x, x.clone(), kind=kind), torch.ones(3))


@pytest.mark.parametrize("kind", ["dtcwt", "haar"])
def test_fidelity_of_a_brightness_shift(kind):
    # the low-pass of a constant shift d is 2^(J-1) d = 4d everywhere (Haar rescaled to the same
    # gain), so L = 4d and the fidelity is exp(-15 * 4 d) = exp(-60 d)
    x = _rand(2, 3, 32, 32, dtype=torch.float64) * 0.9
    d = 0.01
    expected = torch.full((2,), math.exp(-60 * d), dtype=torch.float64)
    torch.testing.assert_close(dwt_fidelity(x + d, x, kind=kind), expected)


@pytest.mark.parametrize("kind", ["dtcwt", "haar"])
def test_fidelity_falls_monotonically_with_blur(kind):
    gt = _rand(2, 3, 64, 64, seed=5)
    scores = [dwt_fidelity(_gaussian_blur(gt, s), gt, kind=kind) for s in (0.5, 1.0, 2.0, 4.0)]
    for sharper, blurrier in zip(scores, scores[1:]):
        assert (blurrier < sharper).all()


def test_fidelity_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ in shape"):
        dwt_fidelity(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 16))
    with pytest.raises(ValueError, match="kind must be"):
        dwt_fidelity(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), kind="db4")


@pytest.mark.parametrize("name", ["dwt", "dwt_haar"])
def test_dwt_reward_scores_and_details(name):
    reward = build_reward(name)
    assert reward.name == name and reward.needs_gt
    gt = _rand(2, 3, 32, 32) * 0.9
    out = reward(RewardInput(gt + 0.02, gt=gt))
    # shift 0.02: L = 4 * 0.02 = 0.08 and the score exp(-15 * 0.08) = exp(-1.2)
    torch.testing.assert_close(out.details["l1"], torch.full((2,), 0.08))
    torch.testing.assert_close(out.scores, torch.full((2,), math.exp(-1.2)))
