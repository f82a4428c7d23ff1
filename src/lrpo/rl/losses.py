"""The LRPO objective in pieces (SPEC section 6): PPO clip loss, GT likelihood regulariser, the
GT path it is evaluated on, the step masks and an optional KL to a reference policy.

Notation (SPEC symbols -> names here):

    log pi_theta, log pi_old    log_prob, old_log_prob  [N], mean over elements of log N(x_prev; mean, sigma^2)
    r = exp(log pi_theta - log pi_old)  ratio
    eps                         clip_range               PPO clip range (reference: 1e-4)
    a_t, a_p                    alphas_cumprod at the step's timestep / at its target level
    x_0^GT                      x0_gt                    the clean GT (latent or image) of each sample
    g_{t_prev}                  gt_path(...)             the GT noised to the target level of a step
    m                           gt_log_density           [N], mean over elements of
                                                         log N(g_{t_prev}; mean_theta(x_t), sigma_t^2)
    tau                         tau                      temperature of the regulariser (reference: 40)

The trainer combines them per trained step j as ``ppo_clip_loss(...).loss + lambda *
gt_likelihood_regularizer(m)`` where ``regularizer_step_mask`` is True (SPEC: lambda = 1e-3).
"""

from __future__ import annotations

from fractions import Fraction
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PPOStats",
    "ppo_clip_loss",
    "gt_likelihood_regularizer",
    "gt_path",
    "regularizer_step_mask",
    "num_train_steps",
    "kl_to_reference",
]


class PPOStats(NamedTuple):
    """Output of :func:`ppo_clip_loss`; all are 0-D float tensors.

    loss:           the clipped surrogate to minimise (carries the gradient).
    approx_kl:      0.5 * mean((log_prob - old_log_prob)^2), detached, for logging.
    clip_fraction:  fraction of samples with |ratio - 1| > clip_range, detached, for logging.
    max_abs_log_ratio: max |log_prob - old_log_prob|, detached: exactly 0 before the first
                    optimiser step of an epoch when the update recomputes the rollout's function.
    """

    loss: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor
    max_abs_log_ratio: Tensor


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> PPOStats:
    """PPO clipped policy loss L = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps))), r = exp(logp - old).

    Args:
        log_prob: [N] float log-probs of the stored actions under the current policy (with grad).
        old_log_prob: [N] float log-probs recorded at rollout time (treated as constants).
        advantages: [N] float advantages of this step (treated as constants).
        clip_range: eps > 0. Log-probs are means over elements, so differences are tiny and the
            reference uses eps = 1e-4.

    Returns:
        :class:`PPOStats`.
    """
    if not (log_prob.ndim == 1 and old_log_prob.shape == log_prob.shape and advantages.shape == log_prob.shape):
        raise ValueError(
            f"ppo_clip_loss: log_prob, old_log_prob and advantages must all be [N], got "
            f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}"
        )
    if not clip_range > 0:
        raise ValueError(f"ppo_clip_loss: clip_range must be > 0, got {clip_range}")
    old_log_prob = old_log_prob.detach()
    advantages = advantages.detach()
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * log_ratio.square().mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
        max_abs_log_ratio = log_ratio.abs().max()
    return PPOStats(loss=loss, approx_kl=approx_kl, clip_fraction=clip_fraction, max_abs_log_ratio=max_abs_log_ratio)


def gt_likelihood_regularizer(gt_log_density: Tensor, tau: float = 40.0) -> Tensor:
    """GT-guided likelihood regulariser L_reg = mean(1 - exp(m / tau)) (SPEC section 6).

    Args:
        gt_log_density: [N] float, m = mean over elements of the Gaussian log-density of the GT
            path latent g_{t_prev} under the policy's step distribution N(mean_theta(x_t), sigma_t^2)
            (differentiable w.r.t. mean_theta). m <= 0 in practice for the latent sizes used, so
            the loss lies in [0, 1) and saturates (gradient -> 0) when the GT is very unlikely.
        tau: > 0, temperature (reference: 40, hard-coded there).

    Returns:
        0-D tensor; minimising it raises the likelihood of the GT path.
    """
    if gt_log_density.ndim != 1:
        raise ValueError(f"gt_likelihood_regularizer: gt_log_density must be [N], got {tuple(gt_log_density.shape)}")
    if not tau > 0:
        raise ValueError(f"gt_likelihood_regularizer: tau must be > 0, got {tau}")
    return (1.0 - torch.exp(gt_log_density / tau)).mean()


def gt_path(
    x0_gt: Tensor,
    alphas_cumprod_prev: Tensor,
    *,
    mode: Literal["marginal", "compounded"] = "marginal",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    chain_alphas_cumprod: Tensor | None = None,
) -> Tensor:
    """The GT noised to the target level of each requested step: g_{t_prev} (SPEC section 6).

    Modes:

    ``"marginal"`` (ours, default): an independent draw from q(x_t | x_0) per requested level,
        g_k = sqrt(a_k) * x0 + sqrt(1 - a_k) * z_k, z_k ~ N(0, I) fresh for every k.

    ``"compounded"`` (the reference's, for exact reproduction): a chain over noise levels
        c_1 > c_2 > ... > c_L (least noisy first) that applies the *marginal* formula to the
        previous, already noised latent: h_0 = x0, h_l = sqrt(c_l) * h_{l-1} + sqrt(1 - c_l) * z_l.
        This is not the forward Markov transition q(x_l | x_{l-1}) (which would scale by
        sqrt(c_l / c_{l-1})): h_l ~ N(sqrt(prod_{i<=l} c_i) x0, (1 - prod_{i<=l} c_i) I), i.e.
        noisier than the level it stands for, and consecutive levels are correlated. The value
        for a requested level is the chain state at that level. The reference (train_lrpo.py of
        BFR_RL) chains through the alphas_cumprod of every sampler timestep (t = 1, 21, ..., 981
        for 50 steps), starting at the least noisy one. Its regularised steps are the last trained
        ones, whose target levels are the least noisy sampler levels, so chaining through the
        requested levels alone (``chain_alphas_cumprod=None``) reproduces it whenever the
        requested levels are a run of sampler timesteps starting at the least noisy one (e.g.
        t_prev in {81, 61, 41, 21, 1}). Pass ``chain_alphas_cumprod`` = alphas_cumprod of all
        sampler timesteps otherwise. A level below every sampler timestep (alphas_cumprod[0], the
        target of the final, never-trained step) is not in the reference chain.

    Args:
        x0_gt: [B, ...] float clean GT (latents, or images in [-1, 1] for a pixel policy).
        alphas_cumprod_prev: [S] target levels a_p of the requested steps, each in (0, 1]; any
            float dtype (float64 recommended), any order.
        mode: "marginal" or "compounded".
        generator: source of the Gaussian draws (on x0_gt's device). Exactly one of
            ``generator`` and ``noise`` must be given.
        noise: explicit draws instead of ``generator``: [S, B, ...] for "marginal" (row k for
            requested level k) and [L, B, ...] for "compounded" (row l for chain level l, least
            noisy first).
        chain_alphas_cumprod: "compounded" only: [L] distinct levels the chain passes through;
            defaults to the distinct requested levels. Every requested level must be one of them
            (matched to a relative tolerance of 1e-6, which tells float32 and float64 copies of
            one schedule value apart from neighbouring timesteps).

    Returns:
        [S, B, ...] tensor, dtype and device of ``x0_gt``; row k is g at level alphas_cumprod_prev[k].
    """
    if mode not in ("marginal", "compounded"):
        raise ValueError(f"gt_path: mode must be 'marginal' or 'compounded', got {mode!r}")
    if x0_gt.ndim < 1 or not x0_gt.is_floating_point():
        raise ValueError(f"gt_path: x0_gt must be a float tensor [B, ...], got {x0_gt.dtype} {tuple(x0_gt.shape)}")
    levels = _check_levels("alphas_cumprod_prev", alphas_cumprod_prev)
    if (generator is None) == (noise is None):
        raise ValueError("gt_path: pass exactly one of generator= and noise= (no global randomness)")
    if chain_alphas_cumprod is not None and mode != "compounded":
        raise ValueError("gt_path: chain_alphas_cumprod only applies to mode='compounded'")

    if mode == "marginal":
        z = _draws(len(levels), x0_gt, generator, noise)
        bshape = (-1,) + (1,) * x0_gt.ndim
        signal = levels.sqrt().to(device=x0_gt.device, dtype=x0_gt.dtype).view(bshape)
        noise_std = (1.0 - levels).sqrt().to(device=x0_gt.device, dtype=x0_gt.dtype).view(bshape)
        return signal * x0_gt.unsqueeze(0) + noise_std * z

    if chain_alphas_cumprod is None:
        chain = torch.unique(levels)  # distinct levels
    else:
        chain = _check_levels("chain_alphas_cumprod", chain_alphas_cumprod)
    chain = torch.sort(chain, descending=True).values  # least noisy first
    if len(chain) > 1 and not (chain[1:] < chain[:-1]).all():
        raise ValueError(f"gt_path: chain_alphas_cumprod must hold distinct levels, got {chain.tolist()}")
    match = torch.isclose(levels[:, None], chain[None, :], rtol=1e-6, atol=0.0)  # [S, L]
    missing = ~match.any(dim=1)
    if missing.any():
        raise ValueError(
            f"gt_path: requested levels {levels[missing].tolist()} are not in chain_alphas_cumprod "
            f"{chain.tolist()}; the compounded chain only has states at its own levels"
        )
    chain_index = match.to(torch.int64).argmax(dim=1)  # [S]

    z = _draws(len(chain), x0_gt, generator, noise)
    states = []
    h = x0_gt
    for l_idx, c in enumerate(chain.tolist()):
        h = math.sqrt(c) * h + math.sqrt(1.0 - c) * z[l_idx]
        states.append(h)
    return torch.stack(states)[chain_index.to(x0_gt.device)]


def regularizer_step_mask(num_train_steps: int, k: int) -> Tensor:
    """[num_train_steps] bool mask, True for the last ``k`` trained steps (the least noisy ones).

    SPEC: 49 trained steps of 50 and K = 5 give True for steps 44..48, i.e. t in {101, 81, 61, 41, 21}.
    ``k = 0`` turns the regulariser off (the reference's "perception" model).
    """
    if num_train_steps < 1:
        raise ValueError(f"regularizer_step_mask: num_train_steps must be >= 1, got {num_train_steps}")
    if not 0 <= k <= num_train_steps:
        raise ValueError(f"regularizer_step_mask: k must be in [0, num_train_steps={num_train_steps}], got {k}")
    mask = torch.zeros(num_train_steps, dtype=torch.bool)
    mask[num_train_steps - k :] = True
    return mask


def num_train_steps(num_steps: int, fraction: float) -> int:
    """Number of trained denoising steps, floor(fraction * num_steps), the first ones in sampling order.

    The product is taken on the decimal value of ``fraction`` as written (its shortest repr), so
    binary rounding cannot lose a step: 0.58 * 100 is 57.99999999999999 in floats but gives 58
    here. (The reference's ``int(50 * 0.99)`` gives the same 49 for the default setting.)

    Args:
        num_steps: >= 1, DDIM steps per rollout.
        fraction: in (0, 1] (SPEC: 0.99).

    Raises:
        ValueError: on arguments out of range or when no step would be trained.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_train_steps: num_steps must be an int >= 1, got {num_steps!r}")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"num_train_steps: fraction must be in (0, 1], got {fraction!r}")
    n = math.floor(Fraction(repr(float(fraction))) * num_steps)
    if n < 1:
        raise ValueError(
            f"num_train_steps: fraction={fraction} of num_steps={num_steps} trains no step; "
            f"need fraction >= {1 / num_steps:g}"
        )
    return n


def kl_to_reference(mean: Tensor, ref_mean: Tensor, std: Tensor | float) -> Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) per sample, averaged over elements: mean((mean - ref)^2 / (2 std^2)).

    Both Gaussians share the DDIM step std, so the KL reduces to the scaled squared distance of
    the means. Averaging over elements matches the per-element-mean log-probs (SPEC section 2).

    Args:
        mean: [N, ...] float, the current policy's step mean (with grad).
        ref_mean: [N, ...] float, the frozen reference policy's step mean (treated as constant).
        std: float or tensor broadcastable to ``mean`` (e.g. [N, 1, 1, 1]), > 0.

    Returns:
        [N] float tensor, >= 0.
    """
    if mean.shape != ref_mean.shape or mean.ndim < 1:
        raise ValueError(
            f"kl_to_reference: mean and ref_mean must have the same shape [N, ...], got "
            f"{tuple(mean.shape)} and {tuple(ref_mean.shape)}"
        )
    std_t = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if not (std_t > 0).all():
        raise ValueError(f"kl_to_reference: std must be > 0, got {std}")
    per_element = (mean - ref_mean.detach()).square() / (2.0 * std_t.square())
    return per_element.reshape(mean.shape[0], -1).mean(dim=1)


def _check_levels(name: str, levels: Tensor) -> Tensor:
    """Validate a 1-D tensor of alphas_cumprod levels in (0, 1]; return it as float64 on the CPU."""
    if not isinstance(levels, Tensor) or levels.ndim != 1 or levels.numel() == 0:
        shape = tuple(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
        raise ValueError(f"gt_path: {name} must be a non-empty 1-D tensor, got {shape}")
    out = levels.detach().to(device="cpu", dtype=torch.float64)
    if not ((out > 0) & (out <= 1)).all():
        raise ValueError(f"gt_path: {name} must lie in (0, 1] (alphas_cumprod values), got {out.tolist()}")
    return out


def _draws(count: int, x0: Tensor, generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
    """[count, *x0.shape] standard normal draws, from ``noise`` or ``generator``."""
    shape = (count, *x0.shape)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"gt_path: noise must have shape {shape}, got {tuple(noise.shape)}")
        return noise.to(device=x0.device, dtype=x0.dtype)
    return torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
