"""Group-relative advantages and noise-level advantage assignment (SPEC section 5).

Notation (SPEC symbols -> names here):

    R_i        rewards[i]            scalar reward of candidate i (higher is better)
    g(i)       group_ids[i]          the group (= the LQ input) that candidate i belongs to
    A_i        advantages[i]         (R_i - mean_{k: g(k)=g(i)} R_k) / (std + eps)
    sigma_j    sigmas[j]             DDIM noise std of denoising step j (j = 0 is the noisiest step)
    w_j        weights[j]            sigma_j / mean_j(sigma_j)
    A_ij       step_advantages[i,j]  clip(w_j * A_i, -clip, clip), the advantage used at step j

Everything here is single-process: a multi-process trainer gathers what it needs (the batch
reward std) itself and passes it in as ``std_override``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AdvantageResult", "group_advantages", "noise_level_weights", "step_advantages"]


class AdvantageResult(NamedTuple):
    """Output of :func:`group_advantages`.

    advantages:          [N] float32. Exactly 0 for members of dropped groups.
    keep:                [N] bool. False for members of groups whose rewards are all equal
                         (no learning signal); the trainer should skip those samples.
    num_dropped_groups:  number of distinct groups whose rewards are all equal.
    std:                 the std the advantages were divided by (before adding eps). In per-group
                         mode (``global_std=False``) it is the mean of the per-group stds, for
                         logging only.
    """

    advantages: Tensor
    keep: Tensor
    num_dropped_groups: int
    std: float


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    global_std: bool = True,
    eps: float = 1e-4,
    std_override: float | None = None,
) -> AdvantageResult:
    """Group-relative advantages A_i = (R_i - mean of R over i's group) / (std + eps).

    Args:
        rewards: [N] float tensor of finite rewards, any float dtype (computed in float64).
        group_ids: [N] integer tensor; candidates with the same id saw the same LQ input. Groups
            need not be contiguous nor of equal size.
        global_std: True (reference and SPEC default): std is the population std (divide by N,
            not N - 1) of ALL N rewards, including those of dropped groups. False: each group is
            divided by its own population std.
        eps: added to the std so a batch of nearly equal rewards does not explode (SPEC: 1e-4).
        std_override: the population std to use instead of the one of ``rewards``. This function
            only sees one process's rewards; a multi-process trainer must all-gather the rewards,
            compute ``gathered.double().std(correction=0)`` and pass it here (group means stay
            local because groups are complete on one process by construction). Only valid with
            ``global_std=True``.

    Returns:
        :class:`AdvantageResult`. A group is dropped when its max and min reward are exactly equal
        (this includes groups of size 1); its members get advantage 0 and ``keep=False``.
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_advantages: rewards must be 1-D and group_ids must have the same shape, got "
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)}"
        )
    if rewards.numel() == 0:
        raise ValueError("group_advantages: rewards is empty; expected at least one reward")
    if not rewards.is_floating_point():
        raise ValueError(f"group_advantages: rewards must be a float tensor, got {rewards.dtype}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool or group_ids.is_complex():
        raise ValueError(f"group_advantages: group_ids must be an integer tensor, got {group_ids.dtype}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"group_advantages: rewards must be finite; non-finite at indices {bad}")
    if eps < 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    if std_override is not None:
        if not global_std:
            raise ValueError(
                "group_advantages: std_override is the batch std of global_std mode; it cannot be "
                "combined with global_std=False (per-group stds)"
            )
        if not (math.isfinite(std_override) and std_override >= 0):
            raise ValueError(f"group_advantages: std_override must be a finite number >= 0, got {std_override}")

    r = rewards.detach().to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # inverse: [N] group index in [0, G)
    num_groups = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=num_groups).to(torch.float64)
    group_mean = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r) / counts
    centered = r - group_mean[inverse]

    # Exact max == min rather than a tolerance on the std: the mean of equal floats need not equal
    # them exactly, so a test on the centred values could keep a signal-free group.
    group_max = torch.zeros(num_groups, dtype=torch.float64, device=r.device).scatter_reduce(
        0, inverse, r, reduce="amax", include_self=False
    )
    group_min = torch.zeros(num_groups, dtype=torch.float64, device=r.device).scatter_reduce(
        0, inverse, r, reduce="amin", include_self=False
    )
    group_constant = group_max == group_min
    keep = ~group_constant[inverse]

    if global_std:
        std = float(std_override) if std_override is not None else float(r.std(correction=0))
        advantages = centered / (std + eps)
        std_logged = std
    else:
        group_var = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
            0, inverse, centered.square()
        ) / counts
        group_std = group_var.sqrt()
        advantages = centered / (group_std[inverse] + eps)
        std_logged = float(group_std.mean())

    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    return AdvantageResult(
        advantages=advantages.to(torch.float32),
        keep=keep,
        num_dropped_groups=int(group_constant.sum()),
        std=std_logged,
    )


def noise_level_weights(sigmas: Tensor) -> Tensor:
    """Noise-level advantage weights w_j = sigma_j / mean(sigma) (SPEC section 5).

    Args:
        sigmas: [S] DDIM noise stds of the S denoising steps, in sampling order (noisiest first),
            >= 0, not all zero. Any float dtype; the mean is taken over all S steps (the reference
            includes the never-trained final step).

    Returns:
        [S] weights, same dtype as ``sigmas``, with mean 1. Noisy early steps get weights > 1.

    Raises:
        ValueError: on a negative or non-finite sigma, or when all are zero (eta = 0: a
        deterministic sampler has no log-probabilities to train, and the reference silently
        falls back to weights of 1 there).
    """
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"noise_level_weights: sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise ValueError(f"noise_level_weights: sigmas must be a float tensor, got {sigmas.dtype}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"noise_level_weights: sigmas must be finite, got {sigmas.tolist()}")
    if (sigmas < 0).any():
        bad = (sigmas < 0).nonzero().flatten().tolist()
        raise ValueError(f"noise_level_weights: sigmas must be >= 0; negative at steps {bad}: {sigmas[bad].tolist()}")
    mean = sigmas.mean()
    if mean == 0:
        raise ValueError(
            "noise_level_weights: all sigmas are zero (DDIM eta = 0?); the noise-level weights "
            "sigma_j / mean(sigma) are undefined. Roll out with eta > 0."
        )
    return sigmas / mean


def step_advantages(advantages: Tensor, weights: Tensor, clip: float = 5.0) -> Tensor:
    """Per-step advantages A_ij = clip(w_j * A_i, -clip, clip) (SPEC section 5).

    Args:
        advantages: [N] float advantages (from :func:`group_advantages`).
        weights: [S] noise-level weights (from :func:`noise_level_weights`); cast to the dtype of
            ``advantages``.
        clip: > 0, the symmetric clip bound (reference: ``adv_clip_max`` = 5).

    Returns:
        [N, S] tensor, dtype of ``advantages``; column j is used at denoising step j.
    """
    if advantages.ndim != 1 or weights.ndim != 1:
        raise ValueError(
            f"step_advantages: advantages [N] and weights [S] must be 1-D, got "
            f"{tuple(advantages.shape)} and {tuple(weights.shape)}"
        )
    if not clip > 0:
        raise ValueError(f"step_advantages: clip must be > 0, got {clip}")
    scaled = advantages[:, None] * weights.to(device=advantages.device, dtype=advantages.dtype)[None, :]
    return scaled.clamp(-clip, clip)
