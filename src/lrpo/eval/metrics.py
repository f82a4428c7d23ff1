"""Full-reference image metrics on [0, 1] tensors, batched: PSNR and SSIM.

SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
population statistics, valid (unpadded) windows, averaged over channels: the same numbers as
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, eps: float = 1e-12) -> Tensor:
    """Per-image PSNR in dB of [B,C,H,W] images: 10 log10(range^2 / MSE)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / (mse + eps))


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM of [B,C,H,W] images (mean over channels and valid windows), in float32.

    The one implementation lives with the SSIM reward (:func:`lrpo.rewards.simple.ssim`); this
    name keeps metrics code independent of the reward package's layout.
    """
    from ..rewards.simple import ssim as _ssim

    return _ssim(x.float(), y.float(), data_range=data_range)
