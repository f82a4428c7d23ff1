"""The SD 2.1 + ControlNet latent policy on tiny random parts: protocol, rollout, training surface."""

import dataclasses

import pytest
import torch

from lrpo.config import ConfigError, DiffusionConfig
from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.schedules import make_alphas_cumprod
from lrpo.policies.sampling import sample_generators, sample_trajectories
from lrpo.policies import sd_loaders as L
from lrpo.policies.base import Policy
from lrpo.policies.latent import ConcatControlNet, LatentPolicy, LoRALinear, OpenCLIPTextTower, restore_faces
from lrpo.policies.latent_config import LatentPolicyConfig
from lrpo.standins import ldm_file_state_dict

TINY = LatentPolicyConfig.preset("tiny", random_init=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (tests/conftest.py)


def _perturb_zero_convs(policy: LatentPolicy, seed: int = 0) -> None:
    # zero convolutions start at 0 (the ControlNet adds nothing); give them weights so it matters
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*policy.controlnet.controlnet_down_blocks, policy.controlnet.controlnet_mid_block]:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))


@pytest.fixture(scope="module")
def policy() -> LatentPolicy:
    p = LatentPolicy.from_config(TINY)
    _perturb_zero_convs(p)
    return p


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g), torch.tensor([981, 501, 1])[:b], torch.rand(b, 3, 48, 48, generator=g)


def _bare_unet(policy, x, t):
    ctx = policy.empty_context.expand(x.shape[0], -1, -1)
    with torch.no_grad():
        return policy.unet(x, t, encoder_hidden_states=ctx).sample


def test_protocol_shapes_and_ranges(policy):
    assert isinstance(policy, Policy) and policy.prediction == "eps"
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    assert cond.shape == (3, 4, 8, 8) and cond.dtype == torch.float32  # VAE x8 of the 64 px stage-1 image
    assert policy.sample_shape(cond) == (3, 4, 8, 8)
    eps = policy(x, t, cond)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    img = policy.decode(x, cond)
    assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    x0 = policy.encode(torch.rand(3, 3, 64, 64), cond)
    assert x0.shape == (3, 4, 8, 8)
    # the condition is the latent of the stage-1 image
    torch.testing.assert_close(cond, policy.vae_encode(policy.stage1_image(lq)), rtol=0, atol=0)


def test_vae_chunking_does_not_change_results(policy):
    x, _, lq = _inputs()
    whole = LatentPolicy.from_config(dataclasses.replace(TINY, vae_chunk=0))
    assert policy.cfg.vae_chunk == 8 and whole.cfg.vae_chunk == 0
    policy.cfg.vae_chunk = 2  # 3 images -> chunks of 2 and 1
    try:  # only float32 summation order may differ with the batch size (~1e-6)
        torch.testing.assert_close(policy.decode(x, None), whole.decode(x, None), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(policy.condition(lq), whole.condition(lq), rtol=1e-5, atol=1e-5)
    finally:
        policy.cfg.vae_chunk = 8


def test_controlnet_adds_13_residuals_scaled(policy):
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    with torch.no_grad():
        down, mid = policy.controlnet(x, t, policy.empty_context.expand(3, -1, -1), cond)
    # tiny: conv_in, level 0's block and downsampler, level 1's block = 4 (+ middle); full size: 12 + 1
    assert len(down) == 4 and [d.shape[1] for d in down] == [32, 32, 32, 64]
    assert mid.shape[1] == 64
    fresh = LatentPolicy.from_config(TINY)  # zero convolutions at 0: the ControlNet changes nothing
    torch.testing.assert_close(fresh(x, t, cond), _bare_unet(fresh, x, t), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy(x, t, cond), _bare_unet(policy, x, t), atol=1e-4)
    off = LatentPolicy.from_config(dataclasses.replace(TINY, control_scale=0.0))
    _perturb_zero_convs(off)
    torch.testing.assert_close(off(x, t, cond), _bare_unet(off, x, t), rtol=1e-5, atol=1e-5)


def test_full_size_controlnet_gives_13_residuals():
    full = LatentPolicyConfig()
    with torch.device("meta"):
        cn = ConcatControlNet(full.unet, 4)
    assert len(cn.controlnet_down_blocks) + 1 == 13  # SPEC section 1: 13 residuals


def test_three_step_ddim_rollout(policy):
    _, _, lq = _inputs()
    cond = policy.condition(lq)
    sampler = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), 3, eta=1.0)
    traj = sample_trajectories(policy, sampler, cond, sample_generators([1, 2, 3]))
    assert traj.latents.shape == (3, 4, 4, 8, 8) and traj.log_probs.shape == (3, 3)
    assert torch.isfinite(traj.log_probs).all() and traj.timesteps.tolist() == [667, 334, 1]
    again = sample_trajectories(policy, sampler, cond[1:2], sample_generators([2]))
    torch.testing.assert_close(again.sample[0], traj.sample[1], rtol=1e-5, atol=1e-5)  # seed alone decides
    img = policy.decode(traj.sample, cond)
    assert img.shape == (3, 3, 64, 64)


def test_only_the_controlnet_is_trainable(policy):
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable == {id(p) for p in policy.controlnet.parameters()}
    for part in (policy.unet, policy.vae, policy.stage1):
        assert not any(p.requires_grad for p in part.parameters())
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    policy.zero_grad(set_to_none=True)
    policy(x, t, cond).square().mean().backward()
    assert all(p.grad is None for p in policy.unet.parameters())
    assert policy.controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert policy.controlnet.conv_in.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)
    policy.train()
    assert policy.controlnet.training and not policy.unet.training and not policy.vae.training


def test_gradient_checkpointing_gives_the_same_gradients(policy):
    ckpt = LatentPolicy.from_config(dataclasses.replace(TINY, gradient_checkpointing=True)).train()
    plain = LatentPolicy.from_config(TINY).train()
    for p in (ckpt, plain):
        _perturb_zero_convs(p)
    x, t, lq = _inputs()
    cond = plain.condition(lq)
    grads = []
    for p in (ckpt, plain):
        p(x, t, cond).square().mean().backward()
        grads.append(torch.cat([q.grad.flatten() for q in p.trainable_parameters()]))
    assert ckpt.unet.down_blocks[0].gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_lora_trains_only_adapters_and_merges_exactly():
    p = LatentPolicy.from_config(dataclasses.replace(TINY, lora_rank=2, lora_alpha=4.0))
    _perturb_zero_convs(p)
    names = {n for n, q in p.named_parameters() if q.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert all(n.startswith("controlnet.") for n in names)
    # tiny ControlNet: 1 transformer block (level 0) + 1 in the middle, 2 attentions x 4 targets, A and B
    assert len(p.trainable_parameters()) == 2 * 2 * 4 * 2
    lora = next(m for m in p.controlnet.modules() if isinstance(m, LoRALinear))
    assert lora.scale == 2.0  # alpha / rank
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in p.controlnet.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(0.1 * torch.randn(m.lora_B.weight.shape, generator=g))
    x, t, lq = _inputs()
    cond = p.condition(lq)
    ctx = p.empty_context.expand(3, -1, -1)
    merged = ConcatControlNet(TINY.unet, 4)
    merged.load_state_dict(p.controlnet_state_dict(), strict=True)
    with torch.no_grad():
        a_down, a_mid = p.controlnet(x, t, ctx, cond)
        b_down, b_mid = merged(x, t, ctx, cond)
    torch.testing.assert_close(a_mid, b_mid, rtol=1e-5, atol=1e-5)
    for a, b in zip(a_down, b_down):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_matches_fp32_within_bf16_precision(policy):
    bf = LatentPolicy.from_config(dataclasses.replace(TINY, precision="bf16"))
    _perturb_zero_convs(bf)
    assert bf.unet.conv_in.weight.dtype == torch.bfloat16
    assert bf.controlnet.conv_in.weight.dtype == torch.float32  # trainable: fp32 master weights
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    ref, out = policy(x, t, cond), bf(x, t, cond)
    assert out.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %); a few layers compound it
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05


def test_trainable_state_dict_roundtrip(policy):
    sd = policy.trainable_state_dict()
    assert sd and all(k.startswith("controlnet.") for k in sd)
    other = LatentPolicy.from_config(TINY)
    other.load_trainable_state_dict(sd)
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    torch.testing.assert_close(other(x, t, cond), policy(x, t, cond), rtol=0, atol=0)
    bad = dict(sd)
    bad.pop("controlnet.conv_in.weight")
    with pytest.raises(L.WeightsMismatchError, match="controlnet.conv_in.weight"):
        other.load_trainable_state_dict(bad, source="ckpt")


def test_restore_faces_applies_the_colour_fix(policy):
    _, _, lq = _inputs(b=2)
    sampler = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), 2, eta=0.0)
    fixed = restore_faces(policy, sampler, lq, [0, 1])
    raw = restore_faces(policy, sampler, lq, [0, 1], color_fix=False)
    assert fixed.shape == (2, 3, 64, 64) and fixed.min() >= 0 and fixed.max() <= 1
    assert not torch.allclose(fixed, raw)


def _write_files(tmp_path, source: LatentPolicy, text: OpenCLIPTextTower) -> dict:
    sd = ldm_file_state_dict(
        source.unet, source.vae, text, unet_arch=TINY.unet, vae_arch=TINY.vae, text_arch=TINY.text, gen=torch.Generator().manual_seed(0)
    )
    torch.save({"state_dict": sd}, tmp_path / "sd.ckpt")
    L.save_diffbir_controlnet(source.controlnet_state_dict(), 1, tmp_path / "v1_face.pth")
    torch.save({"state_dict": source.stage1.state_dict()}, tmp_path / "swinir.ckpt")
    return dict(
        random_init=False, sd_checkpoint=str(tmp_path / "sd.ckpt"), controlnet_checkpoint=str(tmp_path / "v1_face.pth"),
        swinir_checkpoint=str(tmp_path / "swinir.ckpt"),
    )


def test_from_files_reproduces_the_source_and_caches_the_context(tmp_path, policy):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        text = OpenCLIPTextTower(TINY.text).eval()
    paths = _write_files(tmp_path, policy, text)
    loaded = LatentPolicy.from_config(dataclasses.replace(TINY, **paths))
    with torch.no_grad():
        expected_ctx = text(text.empty_prompt_tokens())
    torch.testing.assert_close(loaded.empty_context, expected_ctx, rtol=0, atol=0)
    cache = tmp_path / ("sd.ckpt" + ".empty-prompt.safetensors")
    assert cache.is_file()
    x, t, lq = _inputs()
    cond = policy.condition(lq)
    torch.testing.assert_close(loaded.condition(lq), cond, rtol=0, atol=0)
    reference = policy(x, t, cond)
    with torch.no_grad():
        policy_ctx = policy.empty_context.clone()
        policy.empty_context.copy_(expected_ctx)
        reference = policy(x, t, cond)
        policy.empty_context.copy_(policy_ctx)
    torch.testing.assert_close(loaded(x, t, cond), reference, rtol=0, atol=0)
    # a second build reads the cache (tampered here, same fingerprint) instead of recomputing
    fp = L.text_fingerprint(text.state_dict())
    L.write_cached_context(cache, torch.full_like(expected_ctx, 0.5), fp, "test")
    again = LatentPolicy.from_config(dataclasses.replace(TINY, **paths))
    assert torch.all(again.empty_context == 0.5)
    # without a ControlNet file it starts as a copy of the UNet encoder whose zero convolutions
    # are zero (the weights are allocated uninitialised: nothing may be left unset)
    fresh = LatentPolicy.from_config(dataclasses.replace(TINY, **{**paths, "controlnet_checkpoint": ""}))
    assert not fresh.controlnet.controlnet_mid_block.weight.any()
    torch.testing.assert_close(fresh(x, t, cond), _bare_unet(fresh, x, t), rtol=1e-5, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sd_checkpoint is empty.*sd21-base"):
        LatentPolicyConfig.preset("tiny").validate()
    with pytest.raises(ConfigError, match="swinir_checkpoint is empty"):
        LatentPolicyConfig.preset("tiny", sd_checkpoint="x.ckpt").validate()
    with pytest.raises(ConfigError, match="resolution=72 must be a multiple of 16"):
        LatentPolicyConfig.preset("tiny", random_init=True, resolution=72).validate()
    with pytest.raises(ConfigError, match="lora_unet needs lora_rank"):
        LatentPolicyConfig.preset("tiny", random_init=True, lora_unet=True).validate()
    with pytest.raises(ConfigError, match="unknown latent policy preset"):
        LatentPolicyConfig.preset("huge")
    LatentPolicyConfig(random_init=True).validate()  # the reference sizes are consistent


def test_config_roundtrips_through_the_yaml_machinery():
    from lrpo.config import from_dict, to_dict

    cfg = LatentPolicyConfig.preset("tiny", random_init=True, lora_rank=4)
    back = from_dict(LatentPolicyConfig, to_dict(cfg), prefix="policy")
    assert back == cfg and isinstance(back.unet.attention_levels, tuple)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LatentPolicyConfig, {"unet": {"channels": 3}}, prefix="policy")
