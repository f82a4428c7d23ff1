"""Noise schedules and the conversions between what a network predicts and (x0, eps).

Notation (DDPM / DDIM papers; SPEC section 2):

    beta_t          per-step noise variance, t = 0 .. T-1
    a_t             alphas_cumprod[t] = prod_{s <= t} (1 - beta_s), the signal fraction at level t
    x_t             sqrt(a_t) * x0 + sqrt(1 - a_t) * eps,  eps ~ N(0, I)   (the marginal q(x_t | x0))
    v               sqrt(a_t) * eps - sqrt(1 - a_t) * x0                  (Salimans & Ho, 2022)

Schedules are returned as float64 CPU tensors: the sampler derives its coefficients from them in
float64 and casts once, so rounding in the schedule never reaches the log-probabilities.

The prediction helpers take ``alpha_cumprod_t`` as a python float, a 0-d tensor, a per-sample
tensor of shape [B], or a tensor already broadcastable to the data ([B, 1, ..., 1]). They compute
in float32, or float64 when any input is float64, and return that dtype.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
from torch import Tensor

from lrpo.config import DiffusionConfig

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0")
AlphaLike = Union[float, Tensor]


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
def sd_linear_betas(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled_linear" betas: linspace(sqrt(start), sqrt(end), n) ** 2.

    Returns a float64 tensor [num_timesteps] in (0, 1), increasing.
    """
    if num_timesteps < 2:
        raise ValueError(f"sd_linear_betas: num_timesteps must be >= 2, got {num_timesteps}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"sd_linear_betas: need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021): a_bar(u) = cos(pi/2 * (u + s) / (1 + s)) ** 2.

    beta_i = min(1 - a_bar((i + 1) / T) / a_bar(i / T), max_beta); the cap keeps the last steps
    from reaching beta = 1 (which would make a_t exactly 0). Returns float64 [num_timesteps].
    """
    if num_timesteps < 2:
        raise ValueError(f"cosine_betas: num_timesteps must be >= 2, got {num_timesteps}")
    if s < 0:
        raise ValueError(f"cosine_betas: offset s must be >= 0, got {s}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"cosine_betas: max_beta must be in (0, 1), got {max_beta}")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    a_bar = torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2
    return (1.0 - a_bar[1:] / a_bar[:-1]).clamp(max=max_beta)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """a_t = prod_{s <= t} (1 - beta_s). ``betas``: [T] in (0, 1). Returns float64 [T], decreasing."""
    if betas.ndim != 1:
        raise ValueError(f"alphas_cumprod: betas must be 1-D, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("alphas_cumprod: every beta must lie in (0, 1)")
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def make_alphas_cumprod(cfg: DiffusionConfig) -> Tensor:
    """alphas_cumprod [cfg.train_timesteps] (float64) for ``cfg.schedule`` ("sd_linear" or "cosine")."""
    if cfg.schedule == "sd_linear":
        betas = sd_linear_betas(cfg.train_timesteps, cfg.beta_start, cfg.beta_end)
    elif cfg.schedule == "cosine":
        betas = cosine_betas(cfg.train_timesteps)
    else:
        raise ValueError(f"diffusion.schedule must be 'sd_linear' or 'cosine', got {cfg.schedule!r}")
    return alphas_cumprod(betas)


# ----------------------------------------------------------------------------------------------
# prediction parameterisations
# ----------------------------------------------------------------------------------------------
def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64: bf16/fp16 inputs are upcast for the maths."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def per_sample(value: AlphaLike, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Shape a scalar, [B] or [B, 1, ..., 1] value to broadcast against ``like`` ([B, ...]).

    The result has ``dtype`` (default: ``like``'s) and ``like``'s device.
    """
    dtype = dtype or like.dtype
    v = torch.as_tensor(value, dtype=dtype, device=like.device)
    if v.ndim == 0 or v.ndim == like.ndim:
        return v
    if v.ndim == 1:
        if v.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample value has {v.shape[0]} entries but the batch has {like.shape[0]}")
        return v.reshape(-1, *([1] * (like.ndim - 1)))
    raise ValueError(
        f"per-sample value must be a scalar, [B] or [B, 1, ...] (ndim {like.ndim}); got shape {tuple(v.shape)}"
    )


def _sqrt_pair(alpha_cumprod_t: AlphaLike, like: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # square roots in float64 first: 1 - a_t loses digits in float32 when a_t is close to 1
    a = torch.as_tensor(alpha_cumprod_t, dtype=torch.float64)
    # checked only on the CPU: on an accelerator the test would force a host sync on every call
    if a.device.type == "cpu" and not bool(((a > 0) & (a <= 1)).all()):
        raise ValueError(f"alpha_cumprod_t must lie in (0, 1], got values in [{a.min():.4g}, {a.max():.4g}]")
    sqrt_a = per_sample(a.sqrt(), like, dtype)
    sqrt_1ma = per_sample((1.0 - a).sqrt(), like, dtype)
    return sqrt_a, sqrt_1ma


def x0_eps_from_coefficients(
    model_output: Tensor, x_t: Tensor, sqrt_a: Tensor, sqrt_1ma: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from the network output, given sqrt(a_t) and sqrt(1 - a_t) already broadcastable.

    eps:  x0 = (x_t - sqrt(1-a) eps) / sqrt(a)
    v:    x0 = sqrt(a) x_t - sqrt(1-a) v,   eps = sqrt(a) v + sqrt(1-a) x_t
    x0:   eps = (x_t - sqrt(a) x0) / sqrt(1-a)
    """
    if prediction == "eps":
        return (x_t - sqrt_1ma * model_output) / sqrt_a, model_output
    if prediction == "v":
        return sqrt_a * x_t - sqrt_1ma * model_output, sqrt_a * model_output + sqrt_1ma * x_t
    if prediction == "x0":
        return model_output, (x_t - sqrt_a * model_output) / sqrt_1ma
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def predict_x0_eps(
    model_output: Tensor, x_t: Tensor, alpha_cumprod_t: AlphaLike, prediction: Prediction
) -> tuple[Tensor, Tensor]:
    """Convert a network output at noise level a_t into (x0_hat, eps_hat).

    model_output, x_t: [B, ...] any float dtype. alpha_cumprod_t: scalar, [B] or [B, 1, ...] in (0, 1].
    Returns two tensors [B, ...] in float32 (float64 if an input is float64).
    For "x0" prediction a_t must be < 1 (eps is undefined without noise).
    """
    if model_output.shape != x_t.shape:
        raise ValueError(f"model_output shape {tuple(model_output.shape)} != x_t shape {tuple(x_t.shape)}")
    dtype = compute_dtype(model_output, x_t)
    sqrt_a, sqrt_1ma = _sqrt_pair(alpha_cumprod_t, x_t, dtype)
    return x0_eps_from_coefficients(model_output.to(dtype), x_t.to(dtype), sqrt_a, sqrt_1ma, prediction)


def training_target(x0: Tensor, noise: Tensor, alpha_cumprod_t: AlphaLike, prediction: Prediction) -> Tensor:
    """What the network should output for x_t = add_noise(x0, noise, a_t): noise, v or x0.

    x0, noise: [B, ...]. Returns [B, ...] in float32 (float64 if an input is float64).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} != noise shape {tuple(noise.shape)}")
    dtype = compute_dtype(x0, noise)
    if prediction == "eps":
        return noise.to(dtype)
    if prediction == "x0":
        return x0.to(dtype)
    if prediction == "v":
        sqrt_a, sqrt_1ma = _sqrt_pair(alpha_cumprod_t, x0, dtype)
        return sqrt_a * noise.to(dtype) - sqrt_1ma * x0.to(dtype)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def add_noise(x0: Tensor, noise: Tensor, alpha_cumprod_t: AlphaLike) -> Tensor:
    """A sample of q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I): sqrt(a_t) x0 + sqrt(1 - a_t) noise.

    x0, noise: [B, ...]; alpha_cumprod_t: scalar, [B] or [B, 1, ...]. Returns [B, ...] in float32
    (float64 if an input is float64).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} != noise shape {tuple(noise.shape)}")
    dtype = compute_dtype(x0, noise)
    sqrt_a, sqrt_1ma = _sqrt_pair(alpha_cumprod_t, x0, dtype)
    return sqrt_a * x0.to(dtype) + sqrt_1ma * noise.to(dtype)


__all__ = [
    "Prediction",
    "PREDICTIONS",
    "sd_linear_betas",
    "cosine_betas",
    "alphas_cumprod",
    "make_alphas_cumprod",
    "compute_dtype",
    "per_sample",
    "x0_eps_from_coefficients",
    "predict_x0_eps",
    "training_target",
    "add_noise",
]
