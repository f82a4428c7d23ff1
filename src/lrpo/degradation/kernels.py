"""Gaussian blur kernels (pure functions, no randomness).

Notation (SPEC section 7):
    size            odd kernel side k; offsets run over -r..r with r = (k - 1) // 2
    sigma_x, sigma_y  standard deviations along the kernel's own axes, in pixels
    theta           rotation of those axes, radians, counter-clockwise from the image x axis
    Sigma           covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T

A kernel is ``K[row, col] = exp(-q / 2) / Z`` with ``(x, y) = (col - r, row - r)``, i.e. x runs
along columns (horizontal) and y along rows (vertical), and
``q = [x y] Sigma^-1 [x y]^T = u^2 / sigma_x^2 + v^2 / sigma_y^2`` where
``(u, v) = R(theta)^T (x, y) = (x cos theta + y sin theta, -x sin theta + y cos theta)`` are the
offsets expressed in the kernel's own axes. ``Z`` makes the kernel sum to 1, so blurring keeps the
mean brightness. Every kernel satisfies ``K(-x, -y) = K(x, y)``, which is why correlation (what
``cv2.filter2D`` and ``conv2d`` compute) and convolution give the same blur.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size!r}")


def gaussian_kernels(
    size: int,
    sigma_x: Tensor,
    sigma_y: Tensor,
    theta: Tensor,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Batched anisotropic Gaussian kernels.

    Args:
        size: odd kernel side k.
        sigma_x, sigma_y: ``[B]`` positive standard deviations in pixels.
        theta: ``[B]`` rotation angles in radians.
        dtype: dtype of the result; the maths runs in float64 so that a 0.1 px kernel keeps its
            tiny off-centre weights instead of rounding them away before normalisation.

    Returns:
        ``[B, k, k]`` kernels on the parameters' device, each summing to 1.
    """
    _check_size(size)
    sx, sy, th = (torch.as_tensor(t).to(torch.float64).reshape(-1) for t in (sigma_x, sigma_y, theta))
    if not sx.shape == sy.shape == th.shape:
        raise ValueError(f"sigma_x, sigma_y, theta must have the same length, got {sx.shape}, {sy.shape}, {th.shape}")
    if bool((sx <= 0).any()) or bool((sy <= 0).any()):
        raise ValueError(f"sigmas must be > 0, got sigma_x={sx.tolist()}, sigma_y={sy.tolist()}")
    r = (size - 1) // 2
    offsets = torch.arange(-r, r + 1, dtype=torch.float64, device=sx.device)
    y = offsets.view(1, size, 1)  # rows
    x = offsets.view(1, 1, size)  # columns
    cos, sin = th.cos().view(-1, 1, 1), th.sin().view(-1, 1, 1)
    u = x * cos + y * sin
    v = -x * sin + y * cos
    q = (u / sx.view(-1, 1, 1)) ** 2 + (v / sy.view(-1, 1, 1)) ** 2
    kernel = torch.exp(-0.5 * q)
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    return kernel.to(dtype)


def gaussian_kernel(
    size: int,
    sigma_x: float,
    sigma_y: float,
    theta: float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """One Gaussian kernel ``[size, size]`` summing to 1 (see the module docstring for the maths)."""
    params = torch.tensor([[sigma_x, sigma_y, theta]], dtype=torch.float64, device=device)
    return gaussian_kernels(size, params[:, 0], params[:, 1], params[:, 2], dtype=dtype)[0]


__all__ = ["gaussian_kernel", "gaussian_kernels"]
