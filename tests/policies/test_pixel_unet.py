"""The pixel-space conditional UNet policy (lrpo.policies.pixel_unet)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lrpo.config import ConfigError, PolicyConfig
from lrpo.policies.base import Policy
from lrpo.policies.pixel_unet import PixelPolicy, build_policy, timestep_embedding

from tests.conftest import single_thread

R = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _cfg(**kw) -> PolicyConfig:
    base = dict(resolution=R, base_channels=8, channel_mults=(1, 2), stage1_channels=8, stage1_blocks=1)
    base.update(kw)
    return PolicyConfig(**base)


def _policy(seed: int = 0, **kw) -> PixelPolicy:
    torch.manual_seed(seed)  # parameter initialisation only
    return build_policy(_cfg(**kw)).eval()


def _images(b: int, size: int = R, seed: int = 0) -> torch.Tensor:
    """[b,3,size,size] in [0, 1]."""
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (including the zero-initialised ones) random values, so outputs are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------------------------
# timestep embedding
# ---------------------------------------------------------------------------------------------
def test_timestep_embedding_hand_values():
    # dim 4: half = 2, freqs = exp(-ln(10000) * [0, 1] / 2) = [1, 0.01]
    # t = 1 -> [cos 1, cos 0.01, sin 1, sin 0.01]; t = 0 -> [1, 1, 0, 0]
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    assert emb.shape == (2, 4) and emb.dtype == torch.float32
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    assert torch.allclose(emb, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# shapes and the Policy interface
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("stage1", ["cnn", "none"])
def test_output_shapes(prediction, stage1):
    policy = _policy(prediction=prediction, stage1=stage1)
    assert isinstance(policy, Policy)
    assert policy.prediction == prediction
    lq = _images(2)
    cond = policy.condition(lq)
    shape = policy.sample_shape(cond)
    assert shape == (2, 3, R, R)
    x_t = torch.randn(shape)
    out = policy(x_t, torch.tensor([999, 0]), cond)
    assert out.shape == shape and out.dtype == torch.float32
    # a scalar timestep is broadcast over the batch
    assert policy(x_t, torch.tensor(500), cond).shape == shape


def test_deeper_network_with_attention_has_consistent_shapes():
    cfg = dict(resolution=16, channel_mults=(1, 2, 2), blocks_per_level=2, attention_levels=(1, 2))
    policy = _policy(**cfg)
    _perturb(policy)
    lq = _images(3)
    cond = policy.condition(lq)
    out = policy(torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 990]), cond)
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("stage1, channels", [("cnn", 6), ("none", 3)])
def test_condition_channels_and_range(stage1, channels):
    policy = _policy(stage1=stage1)
    _perturb(policy)
    cond = policy.condition(_images(2))
    assert cond.shape == (2, channels, R, R)
    assert cond.min() >= -1 and cond.max() <= 1
    assert not cond.requires_grad  # stage 1 learns from its own loss, never through the diffusion
    # the first three channels are the LQ mapped to [-1, 1]
    assert torch.allclose(cond[:, :3], _images(2) * 2 - 1, atol=1e-6)


def test_condition_resizes_other_sizes_to_the_resolution():
    policy = _policy()
    cond = policy.condition(_images(1, size=40))
    assert cond.shape == (1, 6, R, R)


def test_trainable_parameters_exclude_stage1():
    policy = _policy(stage1="cnn")
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable == {id(p) for p in policy.unet.parameters()}
    assert not trainable & {id(p) for p in policy.stage1.parameters()}
    assert sum(p.numel() for p in policy.trainable_parameters()) + sum(p.numel() for p in policy.stage1.parameters()) == sum(
        p.numel() for p in policy.parameters()
    )


def test_without_stage1_every_parameter_is_trainable():
    policy = _policy(stage1="none")
    assert policy.stage1 is None
    assert {id(p) for p in policy.trainable_parameters()} == {id(p) for p in policy.parameters()}


# ---------------------------------------------------------------------------------------------
# initialisation: a zero output and the base image
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_network_output_is_exactly_zero_at_initialisation(prediction):
    policy = _policy(prediction=prediction)
    cond = policy.condition(_images(2))
    out = policy(torch.randn(2, 3, R, R), torch.tensor([3, 700]), cond)
    assert torch.equal(out, torch.zeros_like(out))


def test_decoding_zero_residual_gives_the_base_image_exactly():
    policy = _policy(residual=True, stage1="cnn")
    lq = _images(2)
    cond = policy.condition(lq)
    decoded = policy.decode(torch.zeros(2, 3, R, R), cond)
    assert torch.equal(decoded, ((policy.base_image(cond) + 1) / 2).clamp(0, 1))
    # stage 1's tail is zero-initialised too, so the base image is the LQ itself
    # ((x * 2 - 1) + 1) / 2 differs from x by float32 rounding only
    assert torch.allclose(decoded, lq, atol=1e-6)


def test_stage1_starts_as_identity():
    policy = _policy(stage1="cnn")
    lq = _images(2)
    assert torch.equal(policy.stage1_restore(lq), lq * 2 - 1)


def test_x0_prediction_model_restores_the_base_image_before_training():
    from lrpo.diffusion.ddim import DDIMSampler
    from lrpo.diffusion.rollout import initial_noise
    from lrpo.diffusion.schedules import alphas_cumprod, sd_linear_betas
    from lrpo.policies.sampling import restore_images, sample_generators

    # x0-prediction with a zero output: x0_hat = 0, eps_hat = x_t / sqrt(1 - a_t), so each eta = 0 DDIM
    # step is x_prev = sqrt((1 - a_prev) / (1 - a_t)) x_t and the product telescopes to
    # sample = sqrt((1 - a_final) / (1 - a_first)) x_T with a_final = alphas_cumprod[0] (SD's "first")
    policy = _policy(prediction="x0", residual=True, residual_scale=2.0)
    lq = _images(2)
    ac = alphas_cumprod(sd_linear_betas())
    sampler = DDIMSampler(ac, 5, eta=0.0)
    out = restore_images(policy, sampler, lq, seeds=[0, 1])
    x_T = initial_noise((2, 3, R, R), sample_generators([0, 1]))
    a_first = ac[int(sampler.timesteps[0])]
    sample = x_T * math.sqrt((1 - ac[0].item()) / (1 - a_first.item()))
    expected = ((lq * 2 - 1 + sample / 2.0 + 1) / 2).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out - lq).abs().max() < 0.05  # the base image plus a faint trace of noise


def test_v_prediction_model_passes_its_starting_noise_through_before_training():
    from lrpo.diffusion.ddim import DDIMSampler
    from lrpo.diffusion.rollout import initial_noise
    from lrpo.diffusion.schedules import alphas_cumprod, sd_linear_betas
    from lrpo.policies.sampling import restore_images, sample_generators

    # v = 0: x0_hat = sqrt(a_t) x_t and eps_hat = sqrt(1 - a_t) x_t, so an eta = 0 step multiplies x_t by
    # c = sqrt(a_prev a_t) + sqrt((1 - a_prev)(1 - a_t)) = cos(phi_prev - phi_t) <= 1: the output is the
    # base image plus most of x_T / residual_scale (0.78 of it with 5 steps, more with more steps)
    policy = _policy(prediction="v", residual=True, residual_scale=2.0)
    lq = _images(2) * 0.5 + 0.25  # away from 0 and 1, so little is clamped
    sampler = DDIMSampler(alphas_cumprod(sd_linear_betas()), 5, eta=0.0)
    out = restore_images(policy, sampler, lq, seeds=[0, 1])
    factor = torch.prod(
        (sampler.alpha_prev * sampler.alpha_t).sqrt() + ((1 - sampler.alpha_prev) * (1 - sampler.alpha_t)).sqrt()
    ).item()
    assert 0.7 < factor < 1.0
    sample = initial_noise((2, 3, R, R), sample_generators([0, 1])) * factor
    expected = ((lq * 2 - 1 + sample / 2.0 + 1) / 2).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("stage1", ["cnn", "none"])
def test_encode_decode_round_trip(residual, stage1):
    policy = _policy(residual=residual, stage1=stage1, residual_scale=3.0)
    _perturb(policy)  # a stage 1 that is not the identity
    lq, hq = _images(2, seed=1), _images(2, seed=2)
    cond = policy.condition(lq)
    x0 = policy.encode(hq, cond)
    assert x0.shape == (2, 3, R, R)
    assert torch.allclose(policy.decode(x0, cond), hq, atol=1e-6)


def test_encode_is_the_scaled_residual():
    policy = _policy(residual=True, residual_scale=2.0)
    _perturb(policy)
    lq, hq = _images(1, seed=1), _images(1, seed=2)
    cond = policy.condition(lq)
    # x0 = (hq in [-1, 1] - base) * 2
    assert torch.allclose(policy.encode(hq, cond), (hq * 2 - 1 - cond[:, 3:6]) * 2.0, atol=1e-6)
    plain = _policy(residual=False)
    assert torch.allclose(plain.encode(hq, plain.condition(lq)), hq * 2 - 1, atol=1e-7)


def test_decode_clamps_to_the_image_range():
    policy = _policy(residual=False)
    cond = policy.condition(_images(1))
    out = policy.decode(torch.full((1, 3, R, R), 5.0), cond)
    assert out.max().item() == 1.0 and policy.decode(-out * 5, cond).min().item() == 0.0


# ---------------------------------------------------------------------------------------------
# behaviour of a non-trivial network
# ---------------------------------------------------------------------------------------------
def test_samples_do_not_influence_each_other():
    # GroupNorm normalises per sample: a sample's output must not depend on its batch neighbours
    policy = _policy(attention_levels=(1,))
    _perturb(policy)
    cond = policy.condition(_images(3))
    x_t = torch.randn(3, 3, R, R, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 400, 900])
    batched = policy(x_t, t, cond)
    single = torch.cat([policy(x_t[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_output_depends_on_timestep_and_condition():
    policy = _policy()
    _perturb(policy)
    cond = policy.condition(_images(1))
    x_t = torch.randn(1, 3, R, R, generator=torch.Generator().manual_seed(0))
    a = policy(x_t, torch.tensor([10]), cond)
    assert not torch.allclose(a, policy(x_t, torch.tensor([900]), cond))
    assert not torch.allclose(a, policy(x_t, torch.tensor([10]), policy.condition(_images(1, seed=5))))


def test_an_inference_only_policy_runs_channels_last_on_the_cpu_with_the_same_outputs():
    """inference_only: every convolution's activations channels-last (oneDNN's faster layout), the
    outputs in the default layout and equal to the default layout's up to float rounding; a policy
    as built keeps the default layout (what RL training runs: its rounding depends less on the
    batch size)."""
    policy = _policy(attention_levels=(1,))
    _perturb(policy)
    lq = _images(3)
    x_t, t = torch.randn(3, 3, R, R, generator=torch.Generator().manual_seed(2)), torch.tensor([900, 400, 10])
    layouts: list[bool] = []
    hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
             for m in policy.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        cond = policy.condition(lq)
        plain = policy(x_t, t, cond)
        assert not any(layouts)
        layouts.clear()
        assert policy.inference_only() is policy
        fast_cond = policy.condition(lq)
        fast = policy(x_t, t, fast_cond)
    assert layouts and all(layouts)  # stage 1 and the UNet, every convolution
    assert fast.is_contiguous() and fast_cond.is_contiguous()
    torch.testing.assert_close(fast_cond, cond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    for h in hooks:
        h.remove()


def test_zero_initialised_output_layer_still_gets_a_gradient():
    policy = _policy().train()
    cond = policy.condition(_images(2))
    out = policy(torch.randn(2, 3, R, R), torch.tensor([100, 200]), cond)
    (out - 1).pow(2).mean().backward()
    assert policy.unet.out.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# configuration errors
# ---------------------------------------------------------------------------------------------
def test_resolution_not_divisible_is_a_config_error():
    with pytest.raises(ConfigError, match=r"policy.resolution=20 must be divisible by 2\*\*\(len\(channel_mults\)-1\)=8"):
        PixelPolicy(_cfg(resolution=20, channel_mults=(1, 2, 2, 2)))


def test_bad_base_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="policy.base_channels"):
        PixelPolicy(_cfg(base_channels=12))


def test_unknown_policy_kind():
    cfg = dataclasses.replace(_cfg(), kind="latent_sd21")
    with pytest.raises(ValueError, match="policy.kind 'latent_sd21' is not known"):
        build_policy(cfg)
