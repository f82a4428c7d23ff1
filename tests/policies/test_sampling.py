"""Sampling with a policy (lrpo.policies.sampling): shared-prefix rollouts use each group's own condition."""

from __future__ import annotations

import torch

from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.rollout import rollout
from lrpo.diffusion.schedules import alphas_cumprod, sd_linear_betas
from lrpo.policies.sampling import sample_generators, sample_trajectories


class _CondPolicy(torch.nn.Module):
    """A policy whose output depends on its condition: eps = 0.5 x_t + cond."""

    prediction = "eps"

    def sample_shape(self, cond):
        return tuple(cond.shape)

    def forward(self, x_t, t, cond):
        return 0.5 * x_t + cond


def test_shared_steps_follow_each_groups_own_condition():
    # 3 groups of 2 with conditions 0.1, 0.2, 0.3: a group's shared steps are the eta-0 path of its
    # first member's noise under its own condition (not another group's)
    policy, sampler = _CondPolicy(), DDIMSampler(alphas_cumprod(sd_linear_betas()), 6, eta=1.0)
    cond = torch.tensor([0.1, 0.1, 0.2, 0.2, 0.3, 0.3]).view(6, 1, 1, 1).expand(6, 2, 3, 3).contiguous()
    seeds = [10, 11, 12, 13, 14, 15]
    traj = sample_trajectories(policy, sampler, cond, sample_generators(seeds), group_size=2, branch_step=3)
    for g in range(3):
        x_T = traj.latents[2 * g, :1]
        own = rollout(lambda x, t: policy(x, t, cond[2 * g : 2 * g + 1]), sampler.with_eta(0.0), x_T, prediction="eps")
        for member in (2 * g, 2 * g + 1):
            assert torch.allclose(traj.latents[member, :4], own.latents[0, :4], atol=1e-6), (g, member)
    assert not torch.allclose(traj.latents[0, 3], traj.latents[2, 3])  # the groups' paths differ
