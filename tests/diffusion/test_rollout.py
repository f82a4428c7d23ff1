"""Trajectory sampling (lrpo.diffusion.rollout) with a tiny analytic model."""

from __future__ import annotations

import pytest
import torch

from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.rollout import Trajectory, branched_rollout, initial_noise, rollout
from lrpo.diffusion.schedules import alphas_cumprod, sd_linear_betas

SD_AC = alphas_cumprod(sd_linear_betas())
SHAPE = (2, 4, 4)


def linear_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A per-sample, elementwise model: output = 0.5 x_t + 0.001 t (so the timestep matters)."""
    assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
    return 0.5 * x_t + 0.001 * t.view(-1, 1, 1, 1).to(x_t.dtype)


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _run(seeds, sampler, prediction="eps", dtype=torch.float32):
    gens = _generators(seeds)
    x_T = initial_noise((len(seeds), *SHAPE), gens, "cpu", dtype)
    return rollout(linear_model, sampler, x_T, prediction=prediction, generators=gens)


def test_shapes_and_layout():
    s = DDIMSampler(SD_AC, 10, eta=1.0)
    traj = _run([0, 1, 2], s)
    assert isinstance(traj, Trajectory)
    assert traj.latents.shape == (3, 11, *SHAPE) and traj.latents.dtype == torch.float32
    assert traj.log_probs.shape == (3, 10) and traj.log_probs.dtype == torch.float32
    assert torch.equal(traj.timesteps, s.timesteps)
    assert traj.sample.shape == (3, *SHAPE) and traj.x0_pred.shape == (3, *SHAPE)
    # latents[:, 0] is x_T as drawn by initial_noise, latents[:, -1] the returned sample
    assert torch.equal(traj.latents[:, 0], initial_noise((3, *SHAPE), _generators([0, 1, 2])))
    assert torch.equal(traj.latents[:, -1], traj.sample)
    assert bool(torch.isfinite(traj.latents).all()) and bool(torch.isfinite(traj.log_probs).all())


def test_deterministic_with_generators():
    s = DDIMSampler(SD_AC, 10, eta=1.0)
    a, b, c = _run([0, 1], s), _run([0, 1], s), _run([0, 2], s)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert torch.equal(a.latents[0], c.latents[0]) and not torch.equal(a.latents[1], c.latents[1])


def test_sample_independent_of_batch_neighbours():
    s = DDIMSampler(SD_AC, 10, eta=1.0)
    batch = _run([3, 4, 5], s)
    alone = _run([4], s)
    assert torch.equal(batch.latents[1:2], alone.latents)
    assert torch.equal(batch.log_probs[1:2], alone.log_probs)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_recomputed_log_probs_equal_recorded(prediction):
    s = DDIMSampler(SD_AC, 10, eta=1.0)
    traj = _run([6, 7], s, prediction=prediction)
    for j in range(len(s)):
        x_t = traj.latents[:, j]
        t = traj.timesteps[j].expand(2)
        out = s.step(linear_model(x_t, t), x_t, j, prediction=prediction, prev_sample=traj.latents[:, j + 1])
        assert torch.equal(out.log_prob, traj.log_probs[:, j]), j
    # PPO recomputes several steps in one forward: a per-sample index batch gives the same values
    j = torch.tensor([0, 9])
    rows = torch.arange(2)
    x_t = traj.latents[rows, j]
    out = s.step(linear_model(x_t, s.timesteps[j]), x_t, j, prediction=prediction, prev_sample=traj.latents[rows, j + 1])
    assert torch.equal(out.log_prob, traj.log_probs[rows, j])


def test_bf16_trajectory_recomputes_exactly():
    s = DDIMSampler(SD_AC, 5, eta=1.0)
    traj = _run([8, 9], s, dtype=torch.bfloat16)
    assert traj.latents.dtype == torch.bfloat16 and traj.log_probs.dtype == torch.float32
    for j in range(len(s)):
        x_t = traj.latents[:, j]
        out = s.step(linear_model(x_t, traj.timesteps[j].expand(2)), x_t, j, prev_sample=traj.latents[:, j + 1])
        assert torch.equal(out.log_prob, traj.log_probs[:, j])


def test_eta_zero_deterministic_and_record_false():
    s = DDIMSampler(SD_AC, 10, eta=0.0)
    x_T = initial_noise((2, *SHAPE), _generators([1, 2]))
    full = rollout(linear_model, s, x_T, prediction="v")  # eta = 0 needs no generators
    assert full.log_probs.abs().max().item() == 0.0
    bare = rollout(linear_model, s, x_T, prediction="v", record=False)
    assert bare.latents is None and bare.log_probs is None
    assert torch.equal(bare.sample, full.sample) and torch.equal(bare.x0_pred, full.x0_pred)


def test_final_x0_pred_from_last_step():
    # the returned x0_pred is the last step's clean estimate: recompute it from the second-to-last latent
    s = DDIMSampler(SD_AC, 10, eta=0.8)
    traj = _run([10, 11], s, prediction="v")
    x_t = traj.latents[:, -2]
    out = s.step(linear_model(x_t, traj.timesteps[-1].expand(2)), x_t, 9, prediction="v", prev_sample=traj.sample)
    assert torch.equal(out.x0_pred, traj.x0_pred)


def test_rollout_errors_and_no_grad():
    s = DDIMSampler(SD_AC, 5, eta=1.0)
    x_T = torch.zeros(2, *SHAPE, requires_grad=True)
    with pytest.raises(ValueError, match="pass generators"):
        rollout(linear_model, s, x_T, prediction="eps")
    traj = rollout(linear_model, s, x_T, prediction="eps", generators=_generators([0, 1]))
    assert not traj.sample.requires_grad and not traj.log_probs.requires_grad


class _Counted:
    """linear_model, counting the samples it is called on."""

    def __init__(self):
        self.samples = 0

    def __call__(self, x_t, t):
        self.samples += x_t.shape[0]
        return linear_model(x_t, t)


def _branched(seeds, group_size, branch_step, steps=10):
    s = DDIMSampler(SD_AC, steps, eta=1.0)
    gens = _generators(seeds)
    x_T = initial_noise((len(seeds), *SHAPE), gens)
    model, head = _Counted(), _Counted()
    traj = branched_rollout(model, head, s, x_T, group_size=group_size, branch_step=branch_step, prediction="eps", generators=gens)
    return s, x_T, traj, model.samples + head.samples


def test_branched_rollout_shares_the_prefix_and_costs_fewer_forwards():
    # 2 groups of 3, 10 steps, branching at step 6: each group's first 6 steps run once
    s, x_T, traj, forwards = _branched([0, 1, 2, 3, 4, 5], group_size=3, branch_step=6)
    assert forwards == 2 * 6 + 6 * 4  # (B / G) * branch_step + B * (S - branch_step) = 36, against B * S = 60
    assert traj.latents.shape == (6, 11, *SHAPE) and traj.log_probs.shape == (6, 10)
    # the shared steps: a deterministic (eta 0) path from the group's first member's x_T
    head = rollout(linear_model, s.with_eta(0.0), x_T[[0, 3]], prediction="eps")
    for g, rows in enumerate(([0, 1, 2], [3, 4, 5])):
        for r in rows:
            assert torch.equal(traj.latents[r, :7], head.latents[g, :7])
    assert torch.equal(traj.log_probs[:, :6], torch.zeros(6, 6))  # no density on deterministic steps
    # from step 6 on the members part: each draws its own noise (non-zero log-probabilities)
    assert not torch.equal(traj.latents[0, 7], traj.latents[1, 7])
    assert bool((traj.log_probs[:, 6:] != 0).all())
    assert torch.equal(traj.latents[:, -1], traj.sample)


def test_branched_steps_recompute_their_recorded_log_probs():
    # what PPO needs: log pi(latents[j+1] | latents[j]) recomputed at a branched step equals the record
    s, _, traj, _ = _branched([7, 8, 9, 10], group_size=2, branch_step=4)
    for j in range(4, 10):
        x_t = traj.latents[:, j]
        out = s.step(linear_model(x_t, traj.timesteps[j].expand(4)), x_t, j, prediction="eps", prev_sample=traj.latents[:, j + 1])
        assert torch.equal(out.log_prob, traj.log_probs[:, j]), j


def test_branched_rollout_at_step_zero_is_the_plain_rollout():
    _, _, traj, forwards = _branched([0, 1, 2, 3], group_size=2, branch_step=0)
    plain = _run([0, 1, 2, 3], DDIMSampler(SD_AC, 10, eta=1.0))
    assert forwards == 40 and torch.equal(traj.latents, plain.latents) and torch.equal(traj.log_probs, plain.log_probs)


def test_branched_rollout_errors():
    with pytest.raises(ValueError, match="whole number of groups of 4"):
        _branched([0, 1, 2], group_size=4, branch_step=2)
    with pytest.raises(ValueError, match=r"branch_step must be in \[0, 10\)"):
        _branched([0, 1], group_size=2, branch_step=10)
    with pytest.raises(ValueError, match="not a range"):
        rollout(linear_model, DDIMSampler(SD_AC, 10, eta=0.0), torch.zeros(1, *SHAPE), prediction="eps", start=5, stop=5)
