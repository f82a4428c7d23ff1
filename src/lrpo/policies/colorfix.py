"""DiffBIR's wavelet colour fix: keep the restored image's detail, take the colours of stage 1.

A latent diffusion sample can drift in colour (the VAE and the sampler see colour only through
low frequencies). DiffBIR (v1 and v2, ``wavelet_reconstruction`` in its ``utils/common.py``)
corrects this after sampling: split both images into a low-frequency band and the rest with an
a-trous ("with holes") wavelet pyramid, and return

    fixed = high(output) + low(reference)

where ``reference`` is the stage-1 restoration the sample was conditioned on.

The pyramid (levels k = 0 .. L-1, L = 5):
    low_0  = image
    low_{k+1} = B_{2^k}(low_k)       B_r: 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16, dilation r,
                                      replicate padding by r (each channel separately)
    high   = sum_k (low_k - low_{k+1}) = image - low_L      (the sum telescopes)
So ``fixed = output - low_L(output) + low_L(reference)``.

Facts a test can check by hand:
  * the kernel sums to 1, so a constant image is its own low band (replicate padding keeps the
    borders constant too): with a constant reference of colour c and a constant output, the fix
    returns exactly c;
  * the 1-D kernel [1, 2, 1] / 4 maps an alternating sequence +a, -a, +a ... to
    (-a + 2a - a) / 4 = 0, so a pixel checkerboard has no low band away from the borders (the
    replicate padding breaks the alternation within sum_k 2^k = 31 pixels of an edge): there the
    output's checkerboard is kept unchanged and only its mean colour is replaced.
Everything is linear, so the value range does not matter; DiffBIR applies it to [0, 1] images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LEVELS = 5  # DiffBIR's wavelet_decomposition default


def binomial_blur(image: Tensor, radius: int) -> Tensor:
    """3x3 binomial blur with dilation ``radius`` and replicate padding.

    image: [B, C, H, W] float (any range). Returns the same shape and dtype.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an image batch [B, C, H, W], got shape {tuple(image.shape)}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    c = image.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device) / 4
    kernel = (taps[:, None] * taps[None, :]).expand(c, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=radius)


def wavelet_decompose(image: Tensor, levels: int = LEVELS) -> tuple[Tensor, Tensor]:
    """(high, low) bands of ``image`` [B, C, H, W]; ``high + low == image`` up to rounding."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    low = image
    for k in range(levels):
        low = binomial_blur(low, 2**k)
    return image - low, low


def wavelet_color_fix(output: Tensor, reference: Tensor, levels: int = LEVELS) -> Tensor:
    """high(output) + low(reference): ``output``'s detail with ``reference``'s colours.

    output, reference: [B, C, H, W] of equal shape (DiffBIR: the decoded sample and the stage-1
    image, both in [0, 1]). Computed in float32; returned in ``output``'s dtype, not clamped.
    """
    if output.shape != reference.shape:
        raise ValueError(
            f"output {tuple(output.shape)} and reference {tuple(reference.shape)} must have the same shape; "
            "resize the stage-1 image to the output's size first"
        )
    out32, ref32 = output.float(), reference.float()
    high, _ = wavelet_decompose(out32, levels)
    _, low = wavelet_decompose(ref32, levels)
    return (high + low).to(output.dtype)


__all__ = ["LEVELS", "binomial_blur", "wavelet_color_fix", "wavelet_decompose"]
