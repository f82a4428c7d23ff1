"""Wavelet low-pass fidelity: R_dwt = exp(-15 * mean |lowpass(x) - lowpass(GT)|) (SPEC section 4).

The reference scores fidelity on the *low-pass band* of a 3-level dual-tree complex wavelet
transform (DT-CWT; Kingsbury's ``near_sym_b`` biorthogonal filters at level 1, ``qshift_b``
q-shift filters below). Only the low-pass band is needed, so only the low-pass filters appear here,
implemented from the filter bank's definition (no dependency on a wavelet package):

* Level 1: filter rows and columns with the 13-tap symmetric low-pass h0o, no decimation.
  DC gain 1 (sum h0o = 1), so a constant image stays the same constant.
* Level j >= 2: the image holds the two trees interleaved (even samples: tree a, odd: tree b).
  Along each axis, tree a is filtered with ha = h0b and tree b with hb = h0a (= reversed h0b),
  each decimated by 2, and the two results are interleaved again: length r -> r / 2.
  Writing it out for an axis of length r (a multiple of 4) and 14-tap filters,

      y[2i]     = sum_k ha[k] * x[s(4i + 14 - 2k)]      (i = 0 .. r/4 - 1)
      y[2i + 1] = sum_k hb[k] * x[s(4i + 15 - 2k)]

  where s() is half-sample symmetric extension (x[-1] = x[0], x[r] = x[r - 1]); the tree a/b
  outputs go to the even/odd slots because sum(ha * hb) > 0 for qshift_b. DC gain sqrt(2) per
  axis, so each such level multiplies a constant by 2.
* Sizes: an odd input side is extended by repeating its last row/column before level 1; before each
  level >= 2 a side that is not a multiple of 4 gets its first and last row/column repeated.

So for J = 3 levels a constant image c has low-pass 4c: the 15 in exp(-15 L) is calibrated to that
scale (it is the reference's number). The result equals ``pytorch_wavelets.DTCWTForward(J=3,
biort='near_sym_b', qshift='qshift_b')``'s low-pass output (tests: to 1e-12 in float64,
1e-5 in float32).

A Haar variant is offered for speed and simplicity (:func:`lowpass_haar`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BaseReward, RewardInput, RewardOutput
from .registry import register_reward

__all__ = [
    "DWTReward",
    "H0O_NEAR_SYM_B",
    "H0A_QSHIFT_B",
    "dtcwt_lowpass",
    "dwt_fidelity",
    "lowpass_haar",
    "lowpass_l1",
]

# Level-1 low-pass analysis filter of Kingsbury's near_sym_b biorthogonal pair (13 taps, symmetric;
# the taps are k / 5120 for k = -9, 0, 114, -240, -247, 1520, 2844, ...; they sum to 1).
H0O_NEAR_SYM_B: tuple[float, ...] = (
    -0.0017578125, 0.0, 0.022265625, -0.046875, -0.0482421875, 0.296875, 0.55546875,
    0.296875, -0.0482421875, -0.046875, 0.022265625, 0.0, -0.0017578125,
)  # fmt: skip

# Tree-a low-pass analysis filter h0a of Kingsbury's qshift_b q-shift filters (14 taps; they sum to
# sqrt(2)); tree b uses h0b = reversed(h0a). Values as published in the dtcwt package's data.
H0A_QSHIFT_B: tuple[float, ...] = (
    0.003253142763653182, -0.00388321199915849, 0.03466034684485349, -0.03887280126882779,
    -0.11720388769911527, 0.27529538466888204, 0.7561456438925225, 0.5688104207121227,
    0.011866092033797, -0.1067118046866654, 0.023825384794920298, 0.01702522388155399,
    -0.005439475937274115, -0.004556895628475491,
)  # fmt: skip


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of a length-n axis extended by half-sample symmetry (x[-1] = x[0], x[n] = x[n-1]);
    works for any extension length, reflecting as many times as needed."""
    p = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(p < n, p, 2 * n - 1 - p)


def _filter_axis(x: Tensor, taps: Tensor, dim: int, before: int, after: int, stride: int, dilation: int) -> Tensor:
    """Correlate axis ``dim`` (2 or 3) of x [N, C, H, W] with ``taps`` after symmetric extension."""
    idx = _symmetric_index(x.shape[dim], before, after, x.device)
    xe = x.index_select(dim, idx)
    n, c = xe.shape[:2]
    xe = xe.reshape(n * c, 1, *xe.shape[2:])
    if dim == 2:
        w, s, d = taps.view(1, 1, -1, 1), (stride, 1), (dilation, 1)
    else:
        w, s, d = taps.view(1, 1, 1, -1), (1, stride), (1, dilation)
    y = F.conv2d(xe, w, stride=s, dilation=d)
    return y.reshape(n, c, *y.shape[2:])


def _level1_axis(x: Tensor, dim: int) -> Tensor:
    h0o = torch.tensor(H0O_NEAR_SYM_B, dtype=x.dtype, device=x.device)
    half = (len(H0O_NEAR_SYM_B) - 1) // 2  # symmetric odd filter: correlation = convolution
    return _filter_axis(x, h0o, dim, half, half, stride=1, dilation=1)


def _qshift_axis(x: Tensor, dim: int) -> Tensor:
    """One decimating q-shift low-pass step along ``dim``: length r (multiple of 4) -> r / 2.

    In correlation form (what conv2d computes) with x_e = x extended by 12 samples each side,
    y[2i] = sum_q ha[13 - q] x_e[4i + 2q] and y[2i + 1] = sum_q hb[13 - q] x_e[4i + 1 + 2q]:
    the formulas of the module docstring with k = 13 - q. Stride 4 and dilation 2 do the rest.
    """
    h0a = torch.tensor(H0A_QSHIFT_B, dtype=x.dtype, device=x.device)
    h0b = h0a.flip(0)
    m = h0a.numel()
    # correlation takes the reversed filters: reversed ha (= h0b) is h0a, reversed hb (= h0a) is h0b
    ya = _filter_axis(x, h0a, dim, m - 2, m - 2, stride=4, dilation=2)
    # tree b reads x_e one sample later: the same as extending by one sample less before
    yb = _filter_axis(x, h0b, dim, m - 3, m - 2, stride=4, dilation=2)
    y = torch.stack((ya, yb), dim=dim + 1)  # [..., r/4, 2, ...] -> interleave
    shape = list(ya.shape)
    shape[dim] = 2 * ya.shape[dim]
    return y.reshape(shape)


def _pad_to_multiple_of_4(x: Tensor) -> Tensor:
    if x.shape[2] % 4:
        x = torch.cat((x[:, :, :1], x, x[:, :, -1:]), dim=2)
    if x.shape[3] % 4:
        x = torch.cat((x[:, :, :, :1], x, x[:, :, :, -1:]), dim=3)
    return x


def dtcwt_lowpass(x: Tensor, levels: int = 3) -> Tensor:
    """Low-pass band of a ``levels``-level DT-CWT (near_sym_b, qshift_b) of each channel.

    Args:
        x: [N, C, H, W] float (any range; the transform is linear).
        levels: J >= 1.
    Returns:
        [N, C, H', W'] with H' = H / 2^(J-1) for H a multiple of 2^J (see the module docstring
        for other sizes). DC gain 2^(J-1): a constant c maps to 2^(J-1) * c.
    """
    if x.ndim != 4:
        raise ValueError(f"dtcwt_lowpass expects [N, C, H, W], got shape {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if x.shape[2] % 2:
        x = torch.cat((x, x[:, :, -1:]), dim=2)
    if x.shape[3] % 2:
        x = torch.cat((x, x[:, :, :, -1:]), dim=3)
    low = _level1_axis(_level1_axis(x, 2), 3)
    for _ in range(1, levels):
        low = _pad_to_multiple_of_4(low)
        low = _qshift_axis(_qshift_axis(low, 2), 3)
    return low


def lowpass_haar(x: Tensor, levels: int = 3) -> Tensor:
    """Orthonormal Haar low-pass (LL) band after ``levels`` levels.

    One orthonormal Haar level maps each 2x2 block (a, b, c, d) to LL = (a + b + c + d) / 2, i.e.
    2 * (block mean): the analysis low-pass (1/sqrt2, 1/sqrt2) applied along both axes. After J
    levels LL = 2^J * (mean of the 2^J x 2^J block), which is what this returns; a constant image c
    therefore maps to 2^J * c. Sides that are not multiples of 2^J are extended by repeating the
    last row/column (replicate padding at the bottom/right).

    Args:
        x: [N, C, H, W] float.
    Returns:
        [N, C, ceil(H / 2^J), ceil(W / 2^J)].
    """
    if x.ndim != 4:
        raise ValueError(f"lowpass_haar expects [N, C, H, W], got shape {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    k = 2**levels
    pad_h, pad_w = -x.shape[2] % k, -x.shape[3] % k
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(x, k) * k


def lowpass_l1(x: Tensor, gt: Tensor, levels: int = 3, kind: str = "dtcwt") -> Tensor:
    """L_dwt: mean |lowpass(x) - lowpass(gt)| per sample over channels and positions.

    Args:
        x, gt: [B, C, H, W] float in [0, 1].
        kind: "dtcwt" (reference) or "haar". The Haar band is rescaled to the DT-CWT's DC gain
            2^(J-1) (i.e. half the orthonormal LL), so both measure a uniform brightness shift d
            as 2^(J-1) d and a fidelity weight means the same for both on flat regions.
    Returns:
        [B] >= 0, dtype of x.
    """
    if x.shape != gt.shape:
        raise ValueError(f"dwt fidelity: x {tuple(x.shape)} and gt {tuple(gt.shape)} differ in shape")
    if kind == "dtcwt":
        diff = dtcwt_lowpass(x, levels) - dtcwt_lowpass(gt, levels)
    elif kind == "haar":
        diff = (lowpass_haar(x, levels) - lowpass_haar(gt, levels)) * 0.5
    else:
        raise ValueError(f"dwt fidelity: kind must be 'dtcwt' or 'haar', got {kind!r}")
    return diff.abs().flatten(1).mean(1)


def dwt_fidelity(x: Tensor, gt: Tensor, levels: int = 3, weight: float = 15.0, kind: str = "dtcwt") -> Tensor:
    """exp(-weight * L_dwt(x, gt)) per sample: 1 for identical images, -> 0 as they differ.

    Args:
        x, gt: [B, 3, H, W] float in [0, 1].
        levels: wavelet levels (3 in the reference).
        weight: the reference's 15, calibrated to the DT-CWT low-pass scale (DC gain 2^(J-1) = 4:
            a uniform brightness error of 0.02 already costs exp(-15 * 4 * 0.02) = 0.30).
        kind: "dtcwt" (reference) or "haar" (see :func:`lowpass_l1`).
    Returns:
        [B] in (0, 1], dtype of x.
    """
    return torch.exp(-weight * lowpass_l1(x, gt, levels, kind))


class DWTReward(BaseReward):
    """Reward term ``exp(-15 * L_dwt(x, GT))``; details: ``l1`` = the low-pass mean absolute difference."""

    needs_gt = True

    def __init__(self, levels: int = 3, weight: float = 15.0, kind: str = "dtcwt", device: str = "cpu"):
        super().__init__(device)
        if kind not in ("dtcwt", "haar"):
            raise ValueError(f"DWTReward: kind must be 'dtcwt' or 'haar', got {kind!r}")
        if not weight > 0:
            raise ValueError(f"DWTReward: weight must be > 0, got {weight}")
        self.levels, self.weight, self.kind = levels, weight, kind
        self.name = "dwt" if kind == "dtcwt" else "dwt_haar"

    def score(self, inp: RewardInput) -> RewardOutput:
        l1 = lowpass_l1(inp.images.clamp(0, 1), inp.gt.clamp(0, 1), self.levels, self.kind)
        return RewardOutput(torch.exp(-self.weight * l1), {"l1": l1})


def build_dwt(levels: int = 3, weight: float = 15.0, device: str = "cpu") -> DWTReward:
    """Registry factory for "dwt": the reference DT-CWT low-pass fidelity."""
    return DWTReward(levels, weight, "dtcwt", device)


def build_dwt_haar(levels: int = 3, weight: float = 15.0, device: str = "cpu") -> DWTReward:
    """Registry factory for "dwt_haar": the Haar low-pass variant."""
    return DWTReward(levels, weight, "haar", device)


register_reward("dwt", build_dwt)
register_reward("dwt_haar", build_dwt_haar)
