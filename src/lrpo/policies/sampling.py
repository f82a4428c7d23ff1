"""Restore a batch of LQ faces with a policy and a DDIM sampler (no grad, per-sample seeds)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..diffusion.ddim import DDIMSampler
from ..diffusion.rollout import Trajectory, branched_rollout, initial_noise, rollout
from .base import Policy
from ..precision import autocast_context

__all__ = ["restore_images", "sample_generators", "sample_trajectories"]


def sample_generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample, so each output depends only on its own seed, not on batching."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample_trajectories(
    policy: Policy,
    sampler: DDIMSampler,
    cond: Tensor,
    generators: list[torch.Generator],
    record: bool = True,
    precision: str = "fp32",
    forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    group_size: int = 1,
    branch_step: int = 0,
) -> Trajectory:
    """Roll out ``sampler`` from fresh noise for a condition batch [B, ...].

    The generators (one per sample, on CPU) draw x_T and then the sampler noise, so a trajectory
    is reproducible from its seed alone. The network may run in bf16; latents stay float32.
    ``forward`` replaces ``policy(x_t, t, cond)`` (a compiled forward, :mod:`lrpo.policies.compiled`).
    ``branch_step > 0``: groups of ``group_size`` contiguous samples with one condition share their
    first ``branch_step`` steps (:func:`lrpo.diffusion.rollout.branched_rollout`; a recorded rollout).
    The shared steps run eager: a compiled forward is built for the whole batch, and would pad the
    groups' B / group_size samples back to B.
    """
    device = cond.device
    x_T = initial_noise(policy.sample_shape(cond), generators, device=device, dtype=torch.float32)
    model_fn = _model_fn(forward or policy, cond, precision)
    if branch_step:
        if not record:
            raise ValueError("branch_step > 0 is for recorded rollouts (training); inference samples each image alone")
        head_fn = _model_fn(policy, cond[::group_size], precision)
        return branched_rollout(model_fn, head_fn, sampler, x_T, group_size=group_size, branch_step=branch_step,
                                prediction=policy.prediction, generators=generators)
    return rollout(model_fn, sampler, x_T, prediction=policy.prediction, generators=generators, record=record)


def _model_fn(net: Callable[[Tensor, Tensor, Tensor], Tensor], cond: Tensor, precision: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``net(x_t, t, cond)`` in ``precision``, as float32: the model function a rollout calls."""

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with autocast_context(cond.device, precision):
            return net(x_t, t, cond).float()

    return model_fn


@torch.no_grad()
def restore_images(
    policy: Policy,
    sampler: DDIMSampler,
    lq: Tensor,
    seeds: list[int],
    precision: str = "fp32",
    forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """LQ [B,3,H,W] in [0,1] -> restored [B,3,R,R] in [0,1] at the policy's resolution."""
    cond = policy.condition(lq)
    traj = sample_trajectories(policy, sampler, cond, sample_generators(seeds), record=False, precision=precision, forward=forward)
    return policy.decode(traj.sample, cond)
