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
) -> Trajectory:
    """Run all S steps of ``sampler`` from x_T [B, *shape] and return the Trajectory.

    ``generators``: a list of B generators (or one) for the sampler noise; required when
    sampler.eta > 0. Passing the same generators used by ``initial_noise`` continues each sample's
    own stream, so a sample's trajectory does not depend on the rest of the batch.
    ``record=False`` keeps only the final sample (inference; saves S+1 copies of the batch).
    Use ``sampler.with_eta(...)`` to roll out with another eta.
    """
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched [B, ...], got shape {tuple(x_T.shape)}")
    if sampler.eta > 0 and generators is None:
        raise ValueError(f"sampler.eta={sampler.eta} > 0: pass generators (one per sample) for the noise draws")
    batch = x_T.shape[0]
    steps = len(sampler)
    timesteps_dev = sampler.timesteps.to(x_T.device)

    x = x_T
    latents = [x_T] if record else None
    log_probs = [] if record else None
    x0_pred = None
    for j in range(steps):
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


__all__ = ["Trajectory", "ModelFn", "initial_noise", "rollout"]
