"""Loading SD 2.1 (LDM layout), DiffBIR ControlNet and diffusers folders strictly, on tiny models.

Files are made in the published layouts by running our name maps backwards; the maps themselves
are checked against diffusers' own single-file converters (an independent implementation) and
against literal key names and shapes of the real files, taken from the public code.
"""

import pytest
import torch
from safetensors.torch import save_file

from lrpo.policies import sd_loaders as L
from lrpo.policies.latent import ConcatControlNet, OpenCLIPTextTower, build_unet, build_vae
from lrpo.policies.latent_config import LatentPolicyConfig, TextArch
from lrpo.standins import LDM_EXTRA_ENTRIES, ldm_file_state_dict

TINY = LatentPolicyConfig.preset("tiny", random_init=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (tests/conftest.py)


def _seeded(fn, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = fn()
        for p in module.parameters():  # zero convs, norms and biases start at constants: perturb them
            p.data.add_(0.02 * torch.randn_like(p))
    return module.eval()


def _parts(seed=0):
    unet = _seeded(lambda: build_unet(TINY.unet), seed)
    vae = _seeded(lambda: build_vae(TINY.vae), seed + 1)
    text = _seeded(lambda: OpenCLIPTextTower(TINY.text), seed + 2)
    cn = _seeded(lambda: ConcatControlNet(TINY.unet, 4), seed + 3)
    return unet, vae, text, cn


def _ldm_file_dict(unet, vae, text, seed=0):
    """A state dict in the SD 2.x LDM layout (as v2-1_512-ema-pruned.ckpt stores it) holding these
    modules: the whole text tower (3 layers, of which SD reads 2), projection, schedule, EMA counters."""
    return ldm_file_state_dict(
        unet, vae, text, unet_arch=TINY.unet, vae_arch=TINY.vae, text_arch=TINY.text, gen=torch.Generator().manual_seed(seed)
    )


# ----------------------------------------------------------------------------------------------
# the maps agree with diffusers' converters
# ----------------------------------------------------------------------------------------------
def test_unet_map_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet, *_ = _parts()
    ours = unet.state_dict()
    ldm = L.to_original_layout(ours, L.unet_key_map(ours, 1), L.SD_UNET_PREFIX)
    theirs = convert_ldm_unet_checkpoint(ldm, {"layers_per_block": 1})
    assert set(theirs) == set(ours)
    for k in ours:
        assert torch.equal(theirs[k], ours[k]), k


def test_vae_map_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    _, vae, *_ = _parts()
    ours = vae.state_dict()
    ldm = L.to_original_layout(ours, L.vae_key_map(ours, 4), L.SD_VAE_PREFIX)
    # LDM stores the mid-block attention as 1x1 convolutions
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    theirs = convert_ldm_vae_checkpoint(ldm, {"down_block_types": ["D"] * 4, "up_block_types": ["U"] * 4})
    assert set(theirs) == set(ours)
    for k in ours:
        assert torch.equal(theirs[k], ours[k]), k


def test_controlnet_map_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    *_, cn = _parts()
    ours = cn.state_dict()
    bare = L.to_original_layout(ours, L.unet_key_map(ours, 1))
    theirs = convert_controlnet_checkpoint(bare, {"layers_per_block": 1})
    assert set(theirs) == set(ours)
    for k in ours:
        assert torch.equal(theirs[k], ours[k]), k


def test_maps_produce_the_real_key_names_and_shapes():
    # Names and shapes of the published files for the full sizes (meta device: no memory):
    # SD 2.1 UNet/VAE/text: Stability's ldm layout (v2-1_512-ema-pruned.ckpt; the same names are
    # read by diffusers.loaders.single_file_utils and by XPixelGroup/DiffBIR ControlLDM.load_pretrained_sd);
    # ControlNet: XPixelGroup/DiffBIR diffbir/model/controlnet.py (input_blocks.0 takes
    # in_channels + hint_channels = 4 + 4; zero_convs after every input block; middle_block_out).
    full = LatentPolicyConfig()
    with torch.device("meta"):
        unet, vae = build_unet(full.unet), build_vae(full.vae)
        cn, text = ConcatControlNet(full.unet, 4), OpenCLIPTextTower(full.text)

    def layout(module, key_map, prefix=""):
        sd = module.state_dict()
        return {prefix + v: tuple(sd[k].shape) for k, v in key_map.items()}

    u = layout(unet, L.unet_key_map(unet.state_dict(), 2), L.SD_UNET_PREFIX)
    assert len(u) == 686  # tensors under model.diffusion_model. in SD 2.x
    for key, shape in {
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),  # linear: use_linear_in_transformer
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),  # level without attention
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),  # after an attention
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    }.items():
        assert u[key] == shape, key
    v = layout(vae, L.vae_key_map(vae.state_dict(), 4), L.SD_VAE_PREFIX)
    for key, shape in {
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512),  # (512, 512, 1, 1) in the file
        "first_stage_model.encoder.norm_out.weight": (512,),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),  # up.0 = full resolution
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
    }.items():
        assert v[key] == shape, key
    c = layout(cn, L.unet_key_map(cn.state_dict(), 2))
    for key, shape in {
        "input_blocks.0.0.weight": (320, 8, 3, 3),  # noisy latent + condition latent
        "zero_convs.0.0.weight": (320, 320, 1, 1),
        "zero_convs.11.0.weight": (1280, 1280, 1, 1),
        "middle_block_out.0.weight": (1280, 1280, 1, 1),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
    }.items():
        assert c[key] == shape, key
    assert sum(k.startswith("zero_convs.") and k.endswith(".weight") for k in c) == 12  # + middle_block_out = 13
    assert not any(k.startswith(("output_blocks", "out.", "input_hint_block")) for k in c)
    t = {L.SD_TEXT_PREFIX + k: tuple(x.shape) for k, x in text.state_dict().items()}
    assert t["cond_stage_model.model.token_embedding.weight"] == (49408, 1024)
    assert t["cond_stage_model.model.positional_embedding"] == (77, 1024)
    assert t["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"] == (3072, 1024)
    assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" not in t  # penultimate: not held


# ----------------------------------------------------------------------------------------------
# strict loading
# ----------------------------------------------------------------------------------------------
def test_ldm_checkpoint_loads_strictly_and_reproduces_the_modules(tmp_path):
    unet, vae, text, _ = _parts(seed=10)
    torch.save({"state_dict": _ldm_file_dict(unet, vae, text), "global_step": 110000}, tmp_path / "sd.ckpt")
    sd = L.read_checkpoint(tmp_path / "sd.ckpt")
    assert "global_step" not in sd
    u2, v2, t2, _ = _parts(seed=99)
    report = L.load_sd_ldm(sd, unet=u2, vae=v2, text=t2, layers_per_block=1, source="sd.ckpt")
    assert report.loaded == {"unet": len(unet.state_dict()), "vae": len(vae.state_dict()), "text": len(text.state_dict())}
    assert "cond_stage_model.model.text_projection" in report.unused_by_design
    assert report.other_entries == sorted(LDM_EXTRA_ENTRIES)  # schedule buffers and EMA counters
    for a, b in ((unet, u2), (vae, v2), (text, t2)):
        for k, x in a.state_dict().items():
            assert torch.equal(x, b.state_dict()[k]), k
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        out = u2(x, torch.tensor([1, 981]), encoder_hidden_states=ctx).sample
        img = v2.decode(x).sample
    assert out.shape == (2, 4, 8, 8) and img.shape == (2, 3, 64, 64)


def test_wrong_key_and_wrong_shape_are_listed():
    unet, vae, text, _ = _parts()
    sd = _ldm_file_dict(unet, vae, text)
    good = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    sd["model.diffusion_model.input_blocks.1.0.in_layer.0.weight"] = sd.pop(good)
    with pytest.raises(L.WeightsMismatchError) as err:
        L.load_sd_ldm(sd, unet=build_unet(TINY.unet), vae=build_vae(TINY.vae), text=None, layers_per_block=1, source="bad.ckpt")
    msg = str(err.value)
    assert "bad.ckpt" in msg and good in msg and "down_blocks.0.resnets.0.norm1.weight" in msg
    assert "unexpected keys (1): model.diffusion_model.input_blocks.1.0.in_layer.0.weight" in msg

    sd = _ldm_file_dict(unet, vae, text)
    sd["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 4, 3, 3)
    with pytest.raises(L.WeightsMismatchError, match=r"first_stage_model.decoder.conv_out.weight: file \(3, 4, 3, 3\) vs model \(3, 8, 3, 3\)"):
        L.load_sd_ldm(sd, unet=build_unet(TINY.unet), vae=build_vae(TINY.vae), text=None, layers_per_block=1, source="bad.ckpt")

    # an extra text layer is expected (penultimate), an extra UNet block is not
    sd = _ldm_file_dict(unet, vae, text)
    sd["model.diffusion_model.output_blocks.9.0.in_layers.0.weight"] = torch.zeros(32)
    with pytest.raises(L.WeightsMismatchError, match="output_blocks.9.0.in_layers.0.weight"):
        L.load_sd_ldm(sd, unet=build_unet(TINY.unet), vae=build_vae(TINY.vae), text=None, layers_per_block=1, source="bad.ckpt")


def test_not_an_sd_file_is_named():
    with pytest.raises(L.WeightsMismatchError, match="no unet weights"):
        L.load_sd_ldm({"foo": torch.zeros(1)}, unet=build_unet(TINY.unet), vae=build_vae(TINY.vae), text=None, layers_per_block=1, source="x.ckpt")


@pytest.mark.parametrize("prefix", ["", "controlnet.", "control_model."])
def test_diffbir_controlnet_loads_with_or_without_prefix(tmp_path, prefix):
    *_, cn = _parts(seed=20)
    bare = L.to_original_layout(cn.state_dict(), L.unet_key_map(cn.state_dict(), 1))
    assert bare["input_blocks.0.0.weight"].shape[1] == 8  # latent 4 + condition 4
    torch.save({prefix + k: v for k, v in bare.items()}, tmp_path / "v1_face.pth")
    target = ConcatControlNet(TINY.unet, 4)
    L.load_diffbir_controlnet(L.read_checkpoint(tmp_path / "v1_face.pth"), target, layers_per_block=1, source="v1_face.pth")
    for k, x in cn.state_dict().items():
        assert torch.equal(x, target.state_dict()[k]), k


def test_controlnet_export_roundtrip_and_missing_zero_conv(tmp_path):
    *_, cn = _parts(seed=21)
    path = L.save_diffbir_controlnet(cn.state_dict(), 1, tmp_path / "exported.pth")
    raw = torch.load(path, weights_only=True)
    assert "zero_convs.0.0.weight" in raw and "middle_block_out.0.bias" in raw
    target = ConcatControlNet(TINY.unet, 4)
    L.load_diffbir_controlnet(raw, target, layers_per_block=1, source=str(path))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in cn.state_dict().items())
    del raw["zero_convs.3.0.weight"]
    with pytest.raises(L.WeightsMismatchError, match=r"zero_convs.3.0.weight \(ours: controlnet_down_blocks.3.weight\)"):
        L.load_diffbir_controlnet(raw, ConcatControlNet(TINY.unet, 4), layers_per_block=1, source="cut.pth")


def test_init_controlnet_from_unet_copies_the_encoder_and_zeroes_the_hint_channels():
    unet, *_ = _parts(seed=30)
    cn = ConcatControlNet(TINY.unet, 4)
    not_copied = L.init_controlnet_from_unet(cn, unet)
    assert sorted(not_copied) == sorted(k for k in cn.state_dict() if k.startswith("controlnet_"))
    w = cn.conv_in.weight
    assert torch.equal(w[:, :4], unet.conv_in.weight) and not w[:, 4:].any()
    assert torch.equal(cn.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)


def _openclip_to_hf(sd):
    """Test-side inverse of hf_clip_text_to_openclip (transformers CLIPTextModel names)."""
    out = {"text_model.embeddings.position_ids": torch.arange(77)[None]}
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k.split(".")[1]] = v
        else:
            _, _, i, *rest = k.split(".")
            name = ".".join(rest)
            base = f"text_model.encoder.layers.{i}."
            if name.startswith("attn.in_proj_"):
                kind = name.rsplit("_", 1)[1]
                for part, chunk in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.clone()
            else:
                name = (name.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
                out[base + name] = v
    return out


def test_diffusers_folder_loads(tmp_path):
    unet, vae, text, _ = _parts(seed=40)
    for sub in ("unet", "vae", "text_encoder"):
        (tmp_path / sub).mkdir()
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    vae_sd = {}
    for k, v in vae.state_dict().items():  # older SD 2.x folders use the legacy attention names
        k = k.replace("attentions.0.to_q", "attentions.0.query").replace("attentions.0.to_out.0", "attentions.0.proj_attn")
        vae_sd[k] = v.contiguous()
    save_file(vae_sd, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    save_file({k: v.contiguous() for k, v in _openclip_to_hf(text.state_dict()).items()}, tmp_path / "text_encoder" / "model.safetensors")
    u2, v2, t2, _ = _parts(seed=41)
    report = L.load_diffusers_folder(tmp_path, unet=u2, vae=v2, text=t2)
    assert set(report.loaded) == {"unet", "vae", "text"}
    for a, b in ((unet, u2), (vae, v2), (text, t2)):
        for k, x in a.state_dict().items():
            assert torch.equal(x, b.state_dict()[k]), k


def test_text_tower_is_causal_and_reads_the_empty_prompt():
    text = _seeded(lambda: OpenCLIPTextTower(TextArch(width=32, layers=3, heads=2, vocab_size=100)), 5)
    tokens = text.empty_prompt_tokens()
    assert tokens[0, :3].tolist() == [98, 99, 0] and tokens.shape == (1, 77)  # SOT, EOT, zero padding
    assert len(text.transformer.resblocks) == 2  # 3 OpenCLIP layers, the last one skipped
    with torch.no_grad():
        a = text(tokens)
        changed = tokens.clone()
        changed[0, 5] = 7
        b = text(changed)
    assert a.shape == (1, 77, 32)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)  # causal: earlier positions unaffected
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_context_cache_roundtrip(tmp_path):
    ctx = torch.randn(1, 77, 32)
    path = L.write_cached_context(tmp_path / "c.safetensors", ctx, "abc", "sd.ckpt")
    assert torch.equal(L.read_cached_context(path, "abc"), ctx)
    assert L.read_cached_context(path, "other weights") is None
    assert L.read_cached_context(tmp_path / "absent.safetensors", "abc") is None


def test_pickled_objects_need_trust(tmp_path):
    import argparse

    from lrpo.model_files import CheckpointFormatError

    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": argparse.Namespace(lr=1.0)}, tmp_path / "pl.ckpt")
    with pytest.raises(CheckpointFormatError, match="trust_pickle"):
        L.read_checkpoint(tmp_path / "pl.ckpt")
    assert list(L.read_checkpoint(tmp_path / "pl.ckpt", trust_pickle=True)) == ["w"]  # non-tensor entries dropped


def test_lightning_bookkeeping_is_skipped_without_unpickling_it(tmp_path, monkeypatch):
    # A Lightning .ckpt pickles its callbacks beside the weights; Lightning is not installed here,
    # so a class is saved under its module name and the module removed before loading.
    import sys
    import types

    name = "pytorch_lightning.callbacks.model_checkpoint"

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "epoch=3.ckpt"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = name, "ModelCheckpoint"
    with monkeypatch.context() as m:
        for part in ("pytorch_lightning", "pytorch_lightning.callbacks", name):
            m.setitem(sys.modules, part, types.ModuleType(part))
        sys.modules[name].ModelCheckpoint = ModelCheckpoint
        torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"ModelCheckpoint": ModelCheckpoint()}, "epoch": 3}, tmp_path / "pl.ckpt")
    assert "pytorch_lightning" not in sys.modules
    sd = L.read_checkpoint(tmp_path / "pl.ckpt")  # weights_only: the callback becomes an inert placeholder
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(2))
