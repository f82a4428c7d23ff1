"""DDIM sampler: timesteps, noise levels, parity with diffusers, log-probs, randomness (lrpo.diffusion.ddim)."""

from __future__ import annotations

import math

import pytest
import torch

from lrpo.config import DiffusionConfig
from lrpo.diffusion.ddim import DDIMSampler, ddim_mean_std, gaussian_log_prob, sample_noise
from lrpo.diffusion.schedules import alphas_cumprod, sd_linear_betas

SD_AC = alphas_cumprod(sd_linear_betas())
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------------------------------
# timesteps and noise levels
# ---------------------------------------------------------------------------------------------
def test_sd_timesteps_50_steps():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    assert len(s) == 50 and s.step_ratio == 20
    assert s.timesteps.dtype == torch.long
    # leading spacing + offset 1: (49, 48, ..., 0) * 20 + 1
    assert s.timesteps.tolist() == list(range(981, 0, -20))
    assert s.prev_timesteps.tolist() == list(range(961, -20, -20))  # 961, ..., 1, -19
    assert s.prev_timesteps[-1].item() == -19
    torch.testing.assert_close(s.alpha_t, SD_AC[s.timesteps], rtol=0, atol=0)
    torch.testing.assert_close(s.alpha_prev[:-1], SD_AC[s.timesteps[1:]], rtol=0, atol=0)


def test_final_alpha_branch_runs():
    # the last step has t_prev = -19 < 0: "first" must use alphas_cumprod[0], "one" must use 1.0.
    # (A sampler that clamps t_prev to 0 before testing it would give alphas_cumprod[0] in both cases.)
    first = DDIMSampler(SD_AC, 50, eta=1.0, final_alpha="first")
    one = DDIMSampler(SD_AC, 50, eta=1.0, final_alpha="one")
    assert first.alpha_prev[-1].item() == SD_AC[0].item() == pytest.approx(0.99915, rel=1e-15)
    assert one.alpha_prev[-1].item() == 1.0
    # sigma at the last step, "first": a_t = a_1, a_p = a_0 = 1 - b_0, so 1 - a_t/a_p = b_1 and
    # sigma = sqrt((b_0 / (1 - a_1)) * b_1) with b_0 = 0.00085
    b0, b1 = 0.00085, float(sd_linear_betas()[1])
    a1 = (1 - b0) * (1 - b1)
    assert first.sigmas[-1].item() == pytest.approx(math.sqrt(b0 / (1 - a1) * b1), rel=1e-12)
    # "one": 1 - a_p = 0, so sigma = 0 and the step is the deterministic x0 prediction
    assert one.sigmas[-1].item() == 0.0
    x_t, out_eps = _randn(2, 3, 4, 4, seed=1), _randn(2, 3, 4, 4, seed=2)
    res = one.step(out_eps, x_t, 49, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.prev_sample, res.x0_pred, rtol=0, atol=0)
    assert res.log_prob.tolist() == [0.0, 0.0]
    assert one.step(out_eps, x_t, 48, generator=torch.Generator().manual_seed(0)).log_prob.ne(0).all()


def test_noise_level_weights_match_spec():
    # SPEC section 5: w_j = sigma_j / mean(sigma), SD schedule, 50 steps, eta = 1
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    assert bool(torch.isfinite(s.sigmas).all()) and bool((s.sigmas > 0).all())
    w = s.sigmas / s.sigmas.mean()
    index = {int(t): j for j, t in enumerate(s.timesteps)}
    expected = {981: 1.603, 101: 0.504, 81: 0.467, 61: 0.421, 41: 0.352, 21: 0.139, 1: 0.073}
    for t, value in expected.items():
        assert round(w[index[t]].item(), 3) == value, t
    assert round(w[25].item(), 3) == 1.015  # "about 1.015 in the middle (j = 25)"


def test_sigmas_scale_with_eta_and_formula():
    s1, s08 = DDIMSampler(SD_AC, 50, eta=1.0), DDIMSampler(SD_AC, 50, eta=0.8)
    torch.testing.assert_close(s08.sigmas, 0.8 * s1.sigmas, rtol=1e-15, atol=0)
    a_t, a_p = s1.alpha_t[10].item(), s1.alpha_prev[10].item()
    assert s1.sigmas[10].item() == pytest.approx(math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p), rel=1e-14)
    assert DDIMSampler(SD_AC, 50, eta=0.0).sigmas.abs().max().item() == 0.0


def test_other_step_counts_and_offsets():
    s = DDIMSampler(SD_AC, 10, eta=0.5, steps_offset=0)
    assert s.timesteps.tolist() == list(range(900, -1, -100))
    assert s.prev_timesteps[-1].item() == -100
    # T = 1000 steps, offset 0: every timestep, prev of t=0 is -1
    full = DDIMSampler(SD_AC, 1000, eta=0.0, steps_offset=0)
    assert full.timesteps[0].item() == 999 and full.prev_timesteps[-1].item() == -1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=1001), r"num_steps must be an integer in \[1, 1000\]"),
        (dict(num_steps=0), "num_steps"),
        (dict(eta=-0.1), "eta must be"),
        (dict(eta=float("nan")), "eta must be"),
        (dict(eta=3.0), "eta=3.0 is too large"),
        (dict(steps_offset=-1), "steps_offset"),
        (dict(num_steps=1000, steps_offset=1), "outside the schedule"),
        (dict(final_alpha="zero"), "final_alpha"),
        (dict(alphas_cumprod=SD_AC.flip(0)), "strictly decreasing; index 1"),
        (dict(alphas_cumprod=torch.tensor([1.0, 0.5])), r"strictly inside \(0, 1\)"),
        (dict(alphas_cumprod=torch.tensor([3, 2])), "1-D float"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(alphas_cumprod=SD_AC, num_steps=50, eta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DDIMSampler(**args)


def test_from_config_and_with_eta():
    cfg = DiffusionConfig(sample_steps=25, eta=0.8)
    s = DDIMSampler.from_config(cfg)
    assert len(s) == 25 and s.eta == 0.8 and s.timesteps[0].item() == 961  # 24 * 40 + 1
    s1 = s.with_eta(1.0)
    assert s1.eta == 1.0 and torch.equal(s1.timesteps, s.timesteps)
    torch.testing.assert_close(s1.sigmas * 0.8, s.sigmas, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------
# parity with diffusers
# ---------------------------------------------------------------------------------------------
def _diffusers_scheduler(prediction: str, clip_sample: bool = False):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        clip_sample=clip_sample,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
    )
    ref.set_timesteps(50)
    return ref


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("eta", [0.0, 0.8, 1.0])
def test_mean_and_std_match_diffusers_every_step(prediction, eta):
    ref = _diffusers_scheduler(prediction)
    # same float32 schedule on both sides, so only the arithmetic differs (diffusers float32, ours
    # float64 coefficients cast once)
    s = DDIMSampler(ref.alphas_cumprod, 50, eta)
    assert torch.equal(ref.timesteps, s.timesteps)
    x_t, model_output = _randn(2, 4, 8, 8, seed=3), _randn(2, 4, 8, 8, seed=4)
    zeros = torch.zeros_like(x_t)
    for j, t in enumerate(ref.timesteps.tolist()):  # includes the last step, t = 1 -> t_prev = -19
        expected = ref.step(model_output, t, x_t, eta=eta, variance_noise=zeros).prev_sample
        out = s.step(model_output, x_t, j, prediction=prediction, noise=zeros)
        assert bool(torch.isfinite(out.mean).all()) and bool(torch.isfinite(out.log_prob).all())
        # diffusers' float32 rounding, amplified by 1/sqrt(1 - a_t) at the last steps for x0
        # prediction, stays below 1e-5 of the largest value (measured <= 7e-6)
        scale = expected.abs().max().item()
        torch.testing.assert_close(out.mean, expected, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(out.prev_sample, expected, rtol=0, atol=1e-5 * scale)
        # diffusers' float32 1 - a_t/a_p loses ~6.5e-6 relative; ours is float64
        ref_std = eta * ref._get_variance(t, t - s.step_ratio).item() ** 0.5
        assert out.std.shape == (2, 1, 1, 1)
        assert out.std[0].item() == pytest.approx(ref_std, rel=2e-5, abs=0)


def test_clip_x0_matches_diffusers_clip_sample():
    ref = _diffusers_scheduler("eps", clip_sample=True)
    s = DDIMSampler(ref.alphas_cumprod, 50, 1.0)
    x_t, model_output = 3 * _randn(2, 4, 8, 8, seed=5), _randn(2, 4, 8, 8, seed=6)
    for j in (0, 30, 49):
        t = int(s.timesteps[j])
        expected = ref.step(model_output, t, x_t, eta=1.0, variance_noise=torch.zeros_like(x_t))
        out = s.step(model_output, x_t, j, noise=torch.zeros_like(x_t), clip_x0=1.0)
        assert out.x0_pred.abs().max().item() == 1.0  # the clamp is active
        # unclamped entries of x0 = (x_t - sqrt(1-a) eps) / sqrt(a) amplify float32 rounding by
        # 1/sqrt(a_981) = 15 (measured 3e-6)
        torch.testing.assert_close(out.x0_pred, expected.pred_original_sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.mean, expected.prev_sample, rtol=0, atol=1e-5 * expected.prev_sample.abs().max().item())


# ---------------------------------------------------------------------------------------------
# log-probabilities
# ---------------------------------------------------------------------------------------------
def test_gaussian_log_prob_by_hand():
    # at x = mean the density is 1 / (std sqrt(2 pi)): log = -log(2) - 0.9189385 for std = 2
    x = torch.zeros(1, 3)
    assert gaussian_log_prob(x, x, 2.0).item() == pytest.approx(-math.log(2) - 0.5 * math.log(2 * math.pi), rel=1e-7)
    # one std away adds -1/2 per element; mean over [0, 1, 1] offsets = -1/3, sum = -1
    x1 = torch.tensor([[0.0, 2.0, -2.0]])
    base = -math.log(2) - 0.5 * math.log(2 * math.pi)
    assert gaussian_log_prob(x1, x, 2.0).item() == pytest.approx(base - 1 / 3, rel=1e-7)
    assert gaussian_log_prob(x1, x, 2.0, reduce="sum").item() == pytest.approx(3 * base - 1, rel=1e-7)
    assert gaussian_log_prob(x1, x, 2.0, reduce="none").shape == (1, 3)
    with pytest.raises(ValueError, match="reduce"):
        gaussian_log_prob(x1, x, 2.0, reduce="max")


@pytest.mark.parametrize("j", [0, 25, 48, 49])
def test_step_log_prob_equals_torch_normal(j):
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x_t, model_output = _randn(3, 4, 6, 6, seed=7), _randn(3, 4, 6, 6, seed=8)
    out = s.step(model_output, x_t, j, prediction="v", generator=torch.Generator().manual_seed(9))
    ref = torch.distributions.Normal(out.mean.double(), out.std.double()).log_prob(out.prev_sample.double())
    # float32 log-density of order -log(sigma) ~ 4 at the last step; 1e-5 relative covers rounding
    torch.testing.assert_close(out.log_prob.double(), ref.flatten(1).mean(1), rtol=1e-5, atol=1e-6)
    summed = s.step(model_output, x_t, j, prediction="v", prev_sample=out.prev_sample, reduce="sum").log_prob
    torch.testing.assert_close(summed.double(), ref.flatten(1).sum(1), rtol=1e-5, atol=1e-4)
    assert bool(torch.isfinite(out.log_prob).all())


def test_ddim_mean_std_equals_step():
    s = DDIMSampler(SD_AC, 50, eta=0.8)
    x_t, model_output = _randn(2, 3, 4, 4, seed=10), _randn(2, 3, 4, 4, seed=11)
    for j in (0, 49):
        out = s.step(model_output, x_t, j, noise=torch.zeros_like(x_t))
        eps = model_output
        mean, std = ddim_mean_std(out.x0_pred, eps, s.alpha_t[j], s.alpha_prev[j], 0.8)
        torch.testing.assert_close(mean, out.mean, rtol=1e-6, atol=1e-6)
        assert std.item() == pytest.approx(s.sigmas[j].item(), rel=1e-7)
    with pytest.raises(ValueError, match="eta=3.0"):
        ddim_mean_std(x_t, x_t, s.alpha_t[0], s.alpha_prev[0], 3.0)


def test_prev_sample_recomputation_and_explicit_noise():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x_t, model_output = _randn(2, 3, 4, 4, seed=12), _randn(2, 3, 4, 4, seed=13)
    noise = _randn(2, 3, 4, 4, seed=14)
    drawn = s.step(model_output, x_t, 10, noise=noise)
    torch.testing.assert_close(drawn.prev_sample, drawn.mean + drawn.std * noise, rtol=0, atol=0)
    again = s.step(model_output, x_t, 10, prev_sample=drawn.prev_sample)
    assert torch.equal(again.log_prob, drawn.log_prob)
    assert again.prev_sample is drawn.prev_sample


def test_per_sample_index_equals_separate_calls():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x_t, model_output, noise = _randn(4, 3, 4, 4, seed=15), _randn(4, 3, 4, 4, seed=16), _randn(4, 3, 4, 4, seed=17)
    idx = torch.tensor([0, 17, 48, 49])
    mixed = s.step(model_output, x_t, idx, prediction="x0", noise=noise)
    for i, j in enumerate(idx.tolist()):
        alone = s.step(model_output[i : i + 1], x_t[i : i + 1], j, prediction="x0", noise=noise[i : i + 1])
        for field in ("prev_sample", "mean", "std", "log_prob", "x0_pred"):
            assert torch.equal(getattr(mixed, field)[i : i + 1], getattr(alone, field)), (field, j)


def test_same_generator_same_sample_and_per_sample_generators():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x_t, model_output = _randn(3, 3, 4, 4, seed=18), _randn(3, 3, 4, 4, seed=19)
    a = s.step(model_output, x_t, 5, generator=torch.Generator().manual_seed(42))
    b = s.step(model_output, x_t, 5, generator=torch.Generator().manual_seed(42))
    c = s.step(model_output, x_t, 5, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.log_prob, b.log_prob)
    assert not torch.equal(a.prev_sample, c.prev_sample)

    # sample 1 drawn with seed 7 is the same alone or between neighbours with other seeds
    gens = [torch.Generator().manual_seed(seed) for seed in (5, 7, 9)]
    batch = s.step(model_output, x_t, 5, generator=gens)
    alone = s.step(model_output[1:2], x_t[1:2], 5, generator=[torch.Generator().manual_seed(7)])
    assert torch.equal(batch.prev_sample[1:2], alone.prev_sample)
    # and the noise is seed 7's own stream: N(0, I) of one sample's shape
    expected_noise = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(batch.prev_sample[1], batch.mean[1] + batch.std[1] * expected_noise, rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        s.step(model_output, x_t, 5, generator=gens[:2])


def test_sample_noise_dtype_independent():
    a = sample_noise((2, 5), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], "cpu", torch.float32)
    b = sample_noise((2, 5), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], "cpu", torch.bfloat16)
    assert b.dtype == torch.bfloat16 and torch.equal(a.bfloat16(), b)
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        sample_noise((2, 5), None, "cpu", torch.float32)


def test_bf16_inputs_give_float32_log_prob_and_exact_recomputation():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x_t, model_output = _randn(2, 3, 4, 4, seed=20, dtype=torch.bfloat16), _randn(2, 3, 4, 4, seed=21, dtype=torch.bfloat16)
    out = s.step(model_output, x_t, 30, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == torch.float32 and out.mean.dtype == torch.float32
    # the log-prob is of the stored (bf16) sample, so recomputing it from storage is exact
    again = s.step(model_output, x_t, 30, prev_sample=out.prev_sample)
    assert torch.equal(again.log_prob, out.log_prob)


def test_eta_zero_is_deterministic_with_zero_log_prob():
    s = DDIMSampler(SD_AC, 50, eta=0.0)
    x_t, model_output = _randn(2, 3, 4, 4, seed=22), _randn(2, 3, 4, 4, seed=23)
    out = s.step(model_output, x_t, 3)  # no generator needed
    assert torch.equal(out.prev_sample, out.mean)
    assert out.log_prob.shape == (2,) and out.log_prob.abs().max().item() == 0.0
    assert s.step(model_output, x_t, 3, reduce="none").log_prob.shape == (2, 3, 4, 4)


def test_step_argument_errors():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    x = torch.zeros(2, 3)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="pass a generator"):
        s.step(x, x, 0)
    with pytest.raises(ValueError, match=r"step index must be an int in \[0, 49\]"):
        s.step(x, x, 50, generator=g)
    with pytest.raises(ValueError, match=r"step indices must lie in \[0, 49\]"):
        s.step(x, x, torch.tensor([0, -1]), generator=g)
    with pytest.raises(ValueError, match="integer"):
        s.step(x, x, torch.tensor([0.0, 1.0]), generator=g)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[2\]"):
        s.step(x, x, torch.tensor([0, 1, 2]), generator=g)
    with pytest.raises(ValueError, match="not both"):
        s.step(x, x, 0, generator=g, prev_sample=x)
    with pytest.raises(ValueError, match="not both"):
        s.step(x, x, 0, generator=g, noise=x)
    with pytest.raises(ValueError, match="prediction must be one of"):
        s.step(x, x, 0, generator=g, prediction="epsilon")
    with pytest.raises(ValueError, match="model_output shape"):
        s.step(torch.zeros(2, 4), x, 0, generator=g)


def test_coefficients_cached_per_device_and_dtype():
    s = DDIMSampler(SD_AC, 50, eta=1.0)
    c32 = s.coefficients(torch.device("cpu"), torch.float32)
    assert s.coefficients(torch.device("cpu"), torch.float32) is c32
    assert c32.sigma.dtype == torch.float32 and c32.sigma.shape == (50,)
    assert s.coefficients(torch.device("cpu"), torch.float64).sigma.dtype == torch.float64
