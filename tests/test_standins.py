"""Stand-ins of the published model files: their containers, layouts and dtypes; loading them
through the production loaders from the registry (sizes taken from the files); lrpo weights verify.

The tiny stand-ins (lrpo.standins, scale "tiny") are written once for the module; the real-size
layouts are checked on the meta device against the published figures (no memory, no time).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import single_thread
from lrpo import weights
from lrpo.config import DiffusionConfig, from_dict, to_dict
from lrpo.diffusion.schedules import make_alphas_cumprod
from lrpo.policies import build_policy_from_dict
from lrpo.policies import sd_loaders as L
from lrpo.policies.sd_sizes import swinir_arch_from_state_dict, text_arch_from_ldm, unet_arch_from_ldm, vae_arch_from_ldm
from lrpo.policies.latent_config import LatentPolicyConfig, SDUNetArch, TextArch, VAEArch
from lrpo.policies.swinir import SwinIRArch
from lrpo.model_files import StateDictMismatchError, is_torchscript_archive, read_state_dict
from lrpo.standins import (
    LDM_EXTRA_ENTRIES,
    STANDINS,
    clip_rn50_layout,
    controlnet_layout,
    inception_layout,
    ldm_layout,
    random_state_dict,
    sd21_archs,
    swinir_arch,
    swinir_layout,
    vgg16_layout,
    vgg16_widths,
    vit_h_14_layout,
    write_standin,
    write_standins,
)

REPO = Path(__file__).resolve().parents[1]
LEGACY = ("vgg16-imagenet", "lpips-vgg-v0.1", "inception-fid")  # published before torch's zip format


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():  # tiny tensors: threads on a shared 2-core machine cost more than the work
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("standins")
    write_standins(folder, "tiny")
    return folder


@pytest.fixture
def registry(tiny, monkeypatch, tmp_path) -> Path:
    """The registry finds the tiny stand-ins first (and nothing from the user's cache)."""
    monkeypatch.setenv("LRPO_WEIGHTS", str(tiny))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    return tiny


def _file(folder: Path, name: str) -> Path:
    return folder / weights.get_entry(name).filename


def _meta(layout) -> dict[str, torch.Tensor]:
    return {k: torch.empty(e.shape, dtype=e.dtype, device="meta") for k, e in layout.items()}


def _nbytes(layout) -> int:
    return sum(math.prod(e.shape) * e.dtype.itemsize for e in layout.values())


# ----------------------------------------------------------------------------------------------
# containers, names, dtypes
# ----------------------------------------------------------------------------------------------
def test_every_file_has_its_registry_name_and_published_container(tiny):
    for name in STANDINS:
        path = _file(tiny, name)
        assert path.is_file() and path.stat().st_mode & 0o044 == 0o044, name  # readable by others, as a download
        if name in LEGACY:
            assert not zipfile.is_zipfile(path) and path.read_bytes()[:2] == b"\x80\x02", name  # legacy pickle
        elif name == "clip-rn50":
            assert is_torchscript_archive(path)
        elif name != "clip-bpe-vocab":
            assert zipfile.is_zipfile(path) and not is_torchscript_archive(path), name


def test_sd_file_holds_the_ldm_entries(tiny):
    raw = torch.load(_file(tiny, "sd21-base"), map_location="cpu", weights_only=True, mmap=True)
    assert set(raw) == {"global_step", "state_dict"} and raw["global_step"] == 220_000
    sd = raw["state_dict"]
    assert list(sd) == list(ldm_layout(*sd21_archs("tiny")))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.")
    assert sorted(k for k in sd if not k.startswith(prefixes)) == sorted(LDM_EXTRA_ENTRIES)
    # the schedule buffers hold SD's real schedule, float32 as in the file
    torch.testing.assert_close(sd["alphas_cumprod"], make_alphas_cumprod(DiffusionConfig()).float(), rtol=0, atol=0)
    assert sd["model_ema.num_updates"].dtype == torch.int32
    assert {v.dtype for k, v in sd.items() if k.startswith(prefixes)} == {torch.float32}
    # all OpenCLIP text layers (SD reads the penultimate), the projection, no attention mask
    assert "cond_stage_model.model.transformer.resblocks.1.ln_1.weight" in sd
    assert "cond_stage_model.model.text_projection" in sd and "cond_stage_model.model.attn_mask" not in sd
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in LDM's VAE


def test_other_containers(tiny):
    locations = []
    heads = torch.load(_file(tiny, "lpips-vgg-v0.1"), map_location=lambda s, loc: locations.append(loc) or s, weights_only=True)
    assert locations == ["cuda:0"] * 5 and list(heads) == [f"lin{k}.model.1.weight" for k in range(5)]
    frm = torch.load(_file(tiny, "face-reward-model"), map_location="cpu", weights_only=True)
    assert list(frm) == ["state_dict"] and not any(k.startswith("module.") for k in frm["state_dict"])
    assert list(torch.load(_file(tiny, "diffbir-swinir-face"), map_location="cpu", weights_only=True)) == ["state_dict"]
    cn = torch.load(_file(tiny, "diffbir-v1-face"), map_location="cpu", weights_only=True)
    assert "zero_convs.0.0.weight" in cn and "middle_block_out.0.weight" in cn and cn["input_blocks.0.0.weight"].shape[1] == 8
    # OpenAI's RN50: fp16 convolutions and projections, fp32 norms and embeddings, three attributes
    rn = read_state_dict(_file(tiny, "clip-rn50"))  # the TorchScript archive's state_dict()
    assert rn["visual.conv1.weight"].dtype == rn["transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert rn["text_projection"].dtype == rn["visual.attnpool.c_proj.bias"].dtype == torch.float16
    assert rn["visual.bn1.running_var"].dtype == rn["token_embedding.weight"].dtype == rn["ln_final.weight"].dtype == torch.float32
    assert [int(rn[k]) for k in ("input_resolution", "context_length", "vocab_size")] == [224, 77, 49408]


def test_real_layouts_match_the_published_files():
    # SD 2.1: 1242 entries (loaders that load none of them report "1242 unexpected keys" for
    # v2-1_512-ema-pruned.ckpt) and 5.21 GB of float32, as published
    ldm = ldm_layout(*sd21_archs("real"))
    assert len(ldm) == 1242 and _nbytes(ldm) == 5_214_436_920
    assert sum(k.startswith("model.diffusion_model.") for k in ldm) == 686
    # OpenCLIP ViT-H-14: 986.11 M parameters (open_clip's model profile), 3.94 GB of float32
    vit = vit_h_14_layout("real")
    assert round(sum(math.prod(e.shape) for e in vit.values()) / 1e6, 2) == 986.11 and _nbytes(vit) == 3_944_437_764
    # OpenAI RN50.pt: 244 MiB with OpenAI's fp16/fp32 mix (all fp16 would be 195 MiB)
    assert round(_nbytes(clip_rn50_layout("real")) / 2**20) == 243
    # torchvision VGG16: 138,357,544 parameters (528 MiB); FID Inception 91 MiB
    vgg = vgg16_layout(vgg16_widths("real"))
    assert sum(math.prod(e.shape) for e in vgg.values()) == 138_357_544
    assert round(_nbytes(inception_layout()) / 2**20) == 91


def test_sizes_read_off_the_real_layouts_are_the_reference_config():
    # starting from the tiny sizes, the file alone must give back every size the reference config has
    sd = _meta(ldm_layout(*sd21_archs("real")))
    tiny = LatentPolicyConfig.preset("tiny")
    unet = unet_arch_from_ldm(sd, tiny.unet)
    assert unet == dataclasses.replace(SDUNetArch(), head_channels=tiny.unet.head_channels, norm_num_groups=tiny.unet.norm_num_groups)
    assert vae_arch_from_ldm(sd, tiny.vae) == dataclasses.replace(VAEArch(), norm_num_groups=tiny.vae.norm_num_groups)
    assert text_arch_from_ldm(sd, tiny.text) == dataclasses.replace(TextArch(), heads=tiny.text.heads)
    cn = unet_arch_from_ldm(_meta(controlnet_layout(SDUNetArch(), 4)), tiny.unet, prefix="")
    assert cn == dataclasses.replace(unet, latent_channels=8)  # noisy latent + condition latent
    assert swinir_arch_from_state_dict(_meta(swinir_layout(SwinIRArch())), swinir_arch("tiny")) == SwinIRArch()


# ----------------------------------------------------------------------------------------------
# loading through the production paths
# ----------------------------------------------------------------------------------------------
def _policy_section(**overrides) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "policy-sd21-diffbir.yaml").read_text())["policy"]
    return {**raw, **overrides}


def test_policy_from_tiny_files_takes_their_sizes_and_round_trips(registry, caplog):
    raw = _policy_section(resolution=64)  # the reference config, at the tiny files' face size
    with caplog.at_level(logging.WARNING, logger="lrpo.policies.latent"):
        policy = build_policy_from_dict(raw)
    assert "unet.block_out_channels (320, 640, 1280, 1280) -> (64, 128)" in caplog.text
    unet, vae, text = sd21_archs("tiny")
    assert (policy.cfg.unet, policy.cfg.vae, policy.cfg.text, policy.cfg.swinir) == (unet, vae, text, swinir_arch("tiny"))
    assert policy.cfg.precision == "bf16" and policy.cfg.sd_checkpoint == str(registry / "v2-1_512-ema-pruned.ckpt")
    g = torch.Generator().manual_seed(0)
    lq, x_t = torch.rand(2, 3, 48, 48, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    cond = policy.condition(lq)
    eps = policy(x_t, torch.tensor([981, 1]), cond)
    img = policy.decode(x_t, cond)
    assert cond.shape == (2, 4, 8, 8) and torch.isfinite(cond).all() and torch.isfinite(eps).all()
    assert img.shape == (2, 3, 64, 64) and 0 <= img.min() <= img.max() <= 1
    # what a trainer checkpoint stores rebuilds the same policy, from the files or at random
    saved = to_dict(policy.cfg)
    again = build_policy_from_dict(saved)
    assert again.cfg == policy.cfg
    torch.testing.assert_close(again(x_t, torch.tensor([981, 1]), cond), eps, rtol=0, atol=0)
    shell = build_policy_from_dict(saved, load_files=False)
    assert {k: v.shape for k, v in shell.state_dict().items()} == {k: v.shape for k, v in policy.state_dict().items()}
    assert from_dict(LatentPolicyConfig, saved, prefix="policy") == policy.cfg


def test_paper_reward_and_fid_from_tiny_files(registry):
    from lrpo.eval.fid import InceptionFeatures
    from lrpo.rewards import RewardInput, build_composite
    from lrpo.rewards.clip_models import load_clip
    from lrpo.rewards.clip_tokenizer import CLIPTokenizer

    assert CLIPTokenizer.from_file().vocab_size == 49408  # the stand-in vocabulary has CLIP's ids
    reward = build_composite("paper", device="cpu")
    g = torch.Generator().manual_seed(1)
    x, gt = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    out = reward(RewardInput(x, gt, meta=[{"caption": "a photo of a face"}] * 2))
    for term in ("face_reward", "lpips", "clipiqa", "dwt", "total"):
        assert torch.isfinite(out.details[term]).all(), term
    assert reward.components["lpips"][0].model.net.widths == vgg16_widths("tiny")  # from the file
    inception = InceptionFeatures.from_registry()
    feats = inception(x)
    assert feats.shape == (2, inception.feature_dim) and inception.feature_dim < 2048 and torch.isfinite(feats).all()
    vit = load_clip(weights.resolve("openclip-vit-h-14"), quick_gelu=False)
    assert vit.config.vision_width == 64 and torch.isfinite(vit.encode_image(torch.randn(1, 3, 224, 224, generator=g))).all()


def test_wrong_files_still_give_the_clear_errors(registry, tmp_path):
    base = dict(_policy_section(resolution=64, precision="fp32"))
    # a file missing a tensor: the strict load names it
    raw = torch.load(_file(registry, "sd21-base"), map_location="cpu", weights_only=True)
    del raw["state_dict"]["model.diffusion_model.out.2.weight"]
    torch.save(raw, tmp_path / "cut.ckpt")
    with pytest.raises(L.WeightsMismatchError, match=r"model.diffusion_model.out.2.weight \(ours: conv_out.weight\)"):
        build_policy_from_dict({**base, "sd_checkpoint": str(tmp_path / "cut.ckpt")})
    # a ControlNet made for another UNet is named as such
    other = dataclasses.replace(sd21_archs("tiny")[0], block_out_channels=(64, 64))
    torch.save(random_state_dict(controlnet_layout(other), torch.Generator().manual_seed(0)), tmp_path / "cn.pth")
    with pytest.raises(L.WeightsMismatchError, match=r"a ControlNet for another UNet.*block_out_channels: SD file \(64, 128\), ControlNet file \(64, 64\)"):
        build_policy_from_dict({**base, "controlnet_checkpoint": str(tmp_path / "cn.pth")})
    # the VGG file where the LPIPS heads belong
    from lrpo.rewards.lpips import LPIPS

    with pytest.raises(StateDictMismatchError, match="unexpected keys"):
        LPIPS.from_files(_file(registry, "vgg16-imagenet"), _file(registry, "vgg16-imagenet"))


def test_writers_are_seeded_per_file(tmp_path):
    def swinir(folder, seed):
        write_standin("diffbir-swinir-face", folder, "tiny", seed=seed)
        return torch.load(folder / "face_swinir_v1.ckpt", weights_only=True)["state_dict"]

    a, b, c = swinir(tmp_path / "a", 0), swinir(tmp_path / "b", 0), swinir(tmp_path / "c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_first.1.weight"], c["conv_first.1.weight"])
    assert torch.equal(a["layers.0.residual_group.blocks.1.attn_mask"], c["layers.0.residual_group.blocks.1.attn_mask"])


def test_bench_script_writes_the_chosen_files(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_standin_weights", REPO / "bench" / "make_standin_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path), "--scale", "tiny", "--only", "lpips-vgg-v0.1", "clip-bpe-vocab"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe_simple_vocab_16e6.txt.gz", "vgg.pth"]
    assert "peak RSS" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# lrpo weights verify
# ----------------------------------------------------------------------------------------------
def test_verify_reports_a_standin_and_loading_it_still_works(registry, capsys, monkeypatch):
    from lrpo.cli import main
    from lrpo.rewards.clipiqa import CLIPIQAReward

    found = weights.verify("clip-rn50")
    pinned = weights.get_entry("clip-rn50").sha256
    assert found.status == "mismatch" and found.sha256 == weights.sha256_of(_file(registry, "clip-rn50"))
    assert f"not the published file (sha256 {found.sha256}, published {pinned})" in found.message()
    assert main(["weights", "verify", "clip-rn50"]) == 1
    out = capsys.readouterr()
    assert "not the published file" in out.out and "Traceback" not in out.out + out.err
    unpinned = weights.verify("sd21-base")
    assert unpinned.status == "unpinned" and unpinned.sha256 in unpinned.message() and "unpinned" in unpinned.message()
    assert main(["weights", "verify", "sd21-base"]) == 0
    # a file whose hash is the pinned one is "ok"
    with monkeypatch.context() as m:
        m.setitem(weights.KNOWN_FILES, "clip-rn50", dataclasses.replace(weights.get_entry("clip-rn50"), sha256=found.sha256))
        assert weights.verify("clip-rn50").status == "ok"
    # no load path refuses a file for its checksum
    assert isinstance(CLIPIQAReward.from_registry(), CLIPIQAReward)
