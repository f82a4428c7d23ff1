"""Sampling whole DDIM trajectories and recording what PPO needs to recompute them.

The rollout knows nothing of policies or conditions: it calls ``model_fn(x_t, t)`` and the caller
closes over the condition (LQ image, condition latent, ...). The trainer later recomputes
log pi(latents[:, j+1] | latents[:, j]) with ``sampler.step(model_output, latents[:, j], j,
prev_sample=latents[:, j+1])``, which reproduces ``log_probs[:, j]`` exactly for the same weights.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from lrpo.diffusion.ddim import DDIMSampler, GeneratorLike, sample_noise
from lrpo.diffusion.schedules import Prediction

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""model_fn(x_t [B, *shape], t LongTensor [B]) -> model output [B, *shape] in the sampler's prediction form."""


class Trajectory(NamedTuple):
    """One batch of B sampled trajectories of S = len(sampler) steps, samples of shape [*shape].

    latents:   [B, S+1, *shape], x_T's dtype; latents[:, 0] = x_T, latents[:, j+1] = the sample drawn
               at step j, latents[:, S] = the final sample. None when rollout(record=False).
    log_probs: [B, S] float32 (float64 for float64 inputs); log pi(latents[:, j+1] | latents[:, j]),
               mean over elements (SPEC section 2). Zeros for deterministic (eta = 0) steps.
               None when rollout(record=False).
    timesteps: [S] long (CPU), the timestep t of step j (noisiest first), = sampler.timesteps.
    sample:    [B, *shape], x_T's dtype: the final sample (= latents[:, -1]); what a pipeline decodes.
    x0_pred:   [B, *shape], float32: the network's clean estimate at the last step (at the last
               step the sample still carries noise of std sqrt(1 - alphas_cumprod[0]) when
               final_alpha="first"; x0_pred does not).
    """

    latents: Optional[Tensor]
    log_probs: Optional[Tensor]
    timesteps: Tensor
    sample: Tensor
    x0_pred: Tensor


def initial_noise(
    shape: Sequence[int],
    generators: GeneratorLike,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """x_T ~ N(0, I) of ``shape`` = [B, *sample_shape], drawn per sample from ``generators``.

    ``generators``: a list of B torch.Generators (sample i depends only on generator i), or one
    generator for the whole batch. Drawn in float32, then cast to ``dtype`` and moved to ``device``.
    """
    return sample_noise(shape, generators, device, dtype)


@torch.no_grad()
def rollout(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    x_T: Tensor,
    *,
    prediction: Prediction,
    generators: GeneratorLike = None,
    record: bool = True,
    clip_x0: float | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Trajectory:
    """Run all S steps of ``sampler`` from x_T [B, *shape] and return the Trajectory.

    ``generators``: a list of B generators (or one) for the sampler noise; required when
    sampler.eta > 0. Passing the same generators used by ``initial_noise`` continues each sample's
    own stream, so a sample's trajectory does not depend on the rest of the batch.
    ``record=False`` keeps only the final sample (inference; saves S+1 copies of the batch).
    Use ``sampler.with_eta(...)`` to roll out with another eta. ``start``/``stop`` run only steps
    start .. stop-1 (x_T is then the sample before step ``start``; latents and log_probs hold those
    steps only; timesteps stays the sampler's whole list).
    """
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched [B, ...], got shape {tuple(x_T.shape)}")
    if sampler.eta > 0 and generators is None:
        raise ValueError(f"sampler.eta={sampler.eta} > 0: pass generators (one per sample) for the noise draws")
    batch = x_T.shape[0]
    stop = len(sampler) if stop is None else stop
    if not 0 <= start < stop <= len(sampler):
        raise ValueError(f"steps {start} .. {stop - 1} are not a range of the sampler's {len(sampler)} steps")
    timesteps_dev = sampler.timesteps.to(x_T.device)

    x = x_T
    latents = [x_T] if record else None
    log_probs = [] if record else None
    x0_pred = None
    for j in range(start, stop):
        model_output = model_fn(x, timesteps_dev[j].expand(batch))
        out = sampler.step(model_output, x, j, prediction=prediction, generator=generators, clip_x0=clip_x0)
        x, x0_pred = out.prev_sample, out.x0_pred
        if record:
            latents.append(x)
            log_probs.append(out.log_prob)
    return Trajectory(
        latents=torch.stack(latents, dim=1) if record else None,
        log_probs=torch.stack(log_probs, dim=1) if record else None,
        timesteps=sampler.timesteps.clone(),
        sample=x,
        x0_pred=x0_pred,
    )


def branched_rollout(
    model_fn: ModelFn,
    head_fn: ModelFn,
    sampler: DDIMSampler,
    x_T: Tensor,
    *,
    group_size: int,
    branch_step: int,
    prediction: Prediction,
    generators: GeneratorLike = None,
    clip_x0: float | None = None,
) -> Trajectory:
    """A recorded rollout of groups whose members share their first ``branch_step`` steps.

    x_T [B, *shape] holds B / ``group_size`` groups, each group's members contiguous and sharing
    one condition. Steps 0 .. branch_step-1 run once per group, from its first member's x_T and
    deterministically (eta 0, an ODE path): ``head_fn`` sees those B / group_size samples only
    (it closes over one condition per group). The state after them is copied to every member, and
    from step ``branch_step`` on each member steps with the sampler's eta and its own generator, as
    :func:`rollout` does. The network then runs (B / group_size) * branch_step + B * (S - branch_step)
    times instead of B * S (Flow-GRPO-Fast and MixGRPO branch in the same way), and a group's spread
    comes from the branched steps alone, which are the only ones that may be trained: the shared
    steps' log_probs are 0 (a deterministic step has no density). ``branch_step=0`` is :func:`rollout`.
    """
    batch = x_T.shape[0]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"a batch of {batch} samples is not a whole number of groups of {group_size}")
    if not 0 <= branch_step < len(sampler):
        raise ValueError(f"branch_step must be in [0, {len(sampler)}) (the sampler's steps), got {branch_step}")
    if branch_step == 0:
        return rollout(model_fn, sampler, x_T, prediction=prediction, generators=generators, clip_x0=clip_x0)
    head = rollout(head_fn, sampler.with_eta(0.0), x_T[::group_size], prediction=prediction, clip_x0=clip_x0, stop=branch_step)
    branched = head.sample.repeat_interleave(group_size, dim=0)
    tail = rollout(model_fn, sampler, branched, prediction=prediction, generators=generators, clip_x0=clip_x0, start=branch_step)
    shared = head.latents[:, :-1].repeat_interleave(group_size, dim=0)
    return tail._replace(
        latents=torch.cat([shared, tail.latents], dim=1),
        log_probs=torch.cat([tail.log_probs.new_zeros(batch, branch_step), tail.log_probs], dim=1),
    )


__all__ = ["Trajectory", "ModelFn", "branched_rollout", "initial_noise", "rollout"]
