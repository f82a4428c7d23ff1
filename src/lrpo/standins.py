"""Stand-ins for the published model files of the paper's run: random weights, published layout.

A stand-in is written under the registry's file name (``lrpo weights list``) with the container,
key names, dtypes and tensor shapes of the file its publisher serves, filled with seeded random
values scaled so that forward passes stay finite (weights ~ N(0, 1) / sqrt(fan-in), a gain of
sqrt(2) for convolutions, norm scales near 1, BatchNorm variances positive; buffers that are
computed, not learned -- the LDM noise schedule, SwinIR's window index and masks -- hold their
real values). They exercise every load path at full size without the real files, which cannot
be downloaded here; ``lrpo weights verify`` tells them apart by checksum.

``scale="tiny"`` writes the same files (names, containers, key naming scheme, dtypes) with small
widths and depths: everything loads and runs in seconds on a CPU, and the loaders take the sizes
from the files, so the policy and reward configs stay unchanged (a 64 px policy is the usual test).

The published files (what was checked, and where):

  registry name        file                                 container / dtype (size)
  sd21-base            v2-1_512-ema-pruned.ckpt             torch zip of {"global_step", "state_dict"}, fp32 (5.21 GB)
      state_dict: the 12 noise-schedule buffers of ldm DDPM.register_schedule (betas ...
      posterior_mean_coef2, float32 of the float64 numpy values), model.diffusion_model.* (UNet),
      model_ema.decay / model_ema.num_updates (the EMA weights themselves were copied into the model
      and dropped: "ema-pruned"), first_stage_model.* (VAE; mid.attn_1 q/k/v/proj_out as 1x1 convs),
      cond_stage_model.model.* (OpenCLIP ViT-H-14 text tower, all 24 layers, text_projection,
      logit_scale; no attn_mask: a non-persistent buffer in open_clip since 2022-04, and the visual
      tower is deleted by FrozenOpenCLIPEmbedder). Sources: Stability-AI/stablediffusion
      configs/stable-diffusion/v2-inference.yaml, ldm/models/diffusion/ddpm.py, ldm/modules/ema.py;
      mlfoundations/open_clip model.py history. 1242 entries in all, as loaders report for this
      file (IanYeung/MGLD-VSR issue 4: "1242 unexpected keys" for a module matching none, and
      model_ema.decay / model_ema.num_updates among the unexpected ones for another); global_step
      220000 is the value InvokeAI's legacy-model probe associates with SD 2.x epsilon files.
  diffbir-v1-face      v1_face.pth                          torch zip of a plain state dict, fp32
      DiffBIR's ControlNet names without prefix (time_embed, input_blocks with 4 + 4 input channels,
      zero_convs.0-11, middle_block, middle_block_out); XPixelGroup/DiffBIR diffbir/model/controlnet.py,
      cldm.py load_controlnet_from_ckpt (load_state_dict(strict=True)).
  lrpo-fidelity        lrpo_fidelity.pth                    torch zip of a plain state dict (as diffbir-v1-face)
  lrpo-perception      lrpo_perception.pth                  the same
      The LRPO release saves its ControlNets with torch.save(controlnet.state_dict(), ...): the
      v1_face.pth names and shapes (it fine-tunes that ControlNet); size and dtype unknown here.
  diffbir-swinir-face  face_swinir_v1.ckpt                  torch zip of {"state_dict": SwinIR state dict}, fp32
      configs/inference/swinir.yaml (embed 180, 8 x 6 blocks, 6 heads, window 8, unshuffle 8);
      DiffBIR's load_model_from_url unwraps "state_dict" and a "module." prefix, then loads strictly.
      Whether the published file holds more top-level entries (a Lightning checkpoint's) is not known.
  face-reward-model    FaceRewardModel.pth                  torch zip of {"state_dict": open_clip ViT-H-14 CLIP}, fp32
      01NeuralNinja/DiffusionReward utils_refl.py: create_model_and_transforms("ViT-H-14", ...) then
      load_state_dict(checkpoint["state_dict"], strict=True), so no "module." prefix.
  openclip-vit-h-14    open_clip_pytorch_model.bin          torch zip of the CLIP state dict, fp32 (3.94 GB)
      open_clip model_configs/ViT-H-14.json (width 1280, 32 layers, head width 80, patch 14; text
      1024 wide, 24 layers, 16 heads).
  vgg16-imagenet       vgg16-397923af.pth                   legacy (pre-zip) torch.save of an OrderedDict, fp32 (528 MB)
      torchvision vgg16: features.{0,2,5,7,10,12,14,17,19,21,24,26,28}, classifier.{0,3,6}.
  lpips-vgg-v0.1       vgg.pth                              legacy torch.save of an OrderedDict on "cuda:0", fp32 (7 kB)
      lin{0..4}.model.1.weight [1, C, 1, 1]; read from the file itself in richzhang/PerceptualSimilarity
      lpips/weights/v0.1 (its sha256 is the pinned one): magic 0x1950a86a20f9469cfc6c, storages cuda:0.
  clip-rn50            RN50.pt                              TorchScript archive; fp16 + fp32 (244 MiB)
      openai/CLIP clip/model.py convert_weights: conv/linear weights and biases, attention in_proj and
      text_projection in fp16; BatchNorm, LayerNorm, embeddings and logit_scale stay fp32 (this mix
      gives the published size; all-fp16 would be 195 MiB). The archive's state_dict also holds
      input_resolution, context_length and vocab_size (clip.build_model deletes them).
  inception-fid        pt_inception-2015-12-05-6726825d.pth legacy torch.save of an OrderedDict, fp32 (91 MB)
      mseitzer/pytorch-fid inception.py: torchvision Inception3(num_classes=1008, aux_logits=False)
      with the FID blocks, loaded strictly.
  clip-bpe-vocab       bpe_simple_vocab_16e6.txt.gz          gzip text: "#version" header + BPE merges
      (not weights: a stand-in with random merges and the published vocabulary size, 49408 ids,
      so the tokenizers run offline; the real file is public and pinned).

Writers hold one file's tensors at a time (the SD file: 5.2 GB); nothing else is kept between files.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from .diffusion.schedules import sd_linear_betas
from .eval.fid import FID_INCEPTION_WIDTHS, InceptionFeatures
from .policies import sd_loaders as L
from .policies.latent import ConcatControlNet, build_unet, build_vae
from .policies.latent_config import SDUNetArch, TextArch, VAEArch
from .policies.swinir import SwinIR, SwinIRArch
from .rewards.clip_tokenizer import END_OF_WORD, MAX_MERGES
from .rewards.lpips import VGG16_WIDTHS, VGG16Features
from .weights import get_entry

Scale = Literal["real", "tiny"]
SCALES: tuple[str, ...] = ("real", "tiny")


# ----------------------------------------------------------------------------------------------
# layouts: key -> shape, dtype (and a fixed value for computed buffers)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One tensor of a published file: its shape and dtype; ``value`` for computed (not learned)
    buffers whose content must be the real one (index tables, masks, noise schedules)."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    value: Tensor | None = None


Layout = dict[str, Entry]  # in the file's key order


def layout_of(state_dict: Mapping[str, Tensor], keep_values: Callable[[str], bool] = lambda k: False) -> Layout:
    """The layout of a (meta-device or real) state dict; ``keep_values(key)`` keeps that tensor's content."""
    return {
        k: Entry(tuple(v.shape), v.dtype, v.detach().clone() if keep_values(k) else None) for k, v in state_dict.items()
    }


def _ln(prefix: str, c: int) -> Layout:
    return {f"{prefix}.weight": Entry((c,)), f"{prefix}.bias": Entry((c,))}


def _bn(prefix: str, c: int) -> Layout:
    out = {f"{prefix}.{n}": Entry((c,)) for n in ("weight", "bias", "running_mean", "running_var")}
    out[f"{prefix}.num_batches_tracked"] = Entry((), torch.int64)
    return out


def _resblock(prefix: str, w: int) -> Layout:
    """One CLIP transformer block (OpenAI and OpenCLIP names)."""
    return {
        f"{prefix}.attn.in_proj_weight": Entry((3 * w, w)),
        f"{prefix}.attn.in_proj_bias": Entry((3 * w,)),
        f"{prefix}.attn.out_proj.weight": Entry((w, w)),
        f"{prefix}.attn.out_proj.bias": Entry((w,)),
        **_ln(f"{prefix}.ln_1", w),
        f"{prefix}.mlp.c_fc.weight": Entry((4 * w, w)),
        f"{prefix}.mlp.c_fc.bias": Entry((4 * w,)),
        f"{prefix}.mlp.c_proj.weight": Entry((w, 4 * w)),
        f"{prefix}.mlp.c_proj.bias": Entry((w,)),
        **_ln(f"{prefix}.ln_2", w),
    }


def clip_text_layout(*, context_length: int, vocab_size: int, width: int, layers: int, embed_dim: int, prefix: str = "") -> Layout:
    """The text tower of a CLIP state dict, in ``CLIP.state_dict()`` order (own parameters first)."""
    out = {
        f"{prefix}positional_embedding": Entry((context_length, width)),
        f"{prefix}text_projection": Entry((width, embed_dim)),
        f"{prefix}logit_scale": Entry(()),
    }
    for i in range(layers):
        out |= _resblock(f"{prefix}transformer.resblocks.{i}", width)
    out[f"{prefix}token_embedding.weight"] = Entry((vocab_size, width))
    out |= _ln(f"{prefix}ln_final", width)
    return out


def clip_layout(
    *,
    embed_dim: int,
    image_resolution: int,
    vision_layers: int | tuple[int, ...],
    vision_width: int,
    patch_size: int | None,
    context_length: int,
    vocab_size: int,
    text_width: int,
    text_layers: int,
) -> Layout:
    """Every tensor of an OpenAI / OpenCLIP ``CLIP`` state dict (float32); ModifiedResNet image
    tower if ``vision_layers`` is a tuple of Bottleneck counts, else a ViT of that many layers.
    Names follow openai/CLIP clip/model.py and open_clip's CLIP (recorded in lrpo.rewards.clip_models)."""
    text = clip_text_layout(context_length=context_length, vocab_size=vocab_size, width=text_width, layers=text_layers, embed_dim=embed_dim)
    own = {k: text.pop(k) for k in ("positional_embedding", "text_projection", "logit_scale")}
    visual: Layout = {}
    if isinstance(vision_layers, tuple):
        w = vision_width
        visual["visual.conv1.weight"] = Entry((w // 2, 3, 3, 3))
        visual |= _bn("visual.bn1", w // 2)
        visual["visual.conv2.weight"] = Entry((w // 2, w // 2, 3, 3))
        visual |= _bn("visual.bn2", w // 2)
        visual["visual.conv3.weight"] = Entry((w, w // 2, 3, 3))
        visual |= _bn("visual.bn3", w)
        inplanes = w
        for i, blocks in enumerate(vision_layers):
            planes = w * 2**i
            for j in range(blocks):
                p = f"visual.layer{i + 1}.{j}"
                visual[f"{p}.conv1.weight"] = Entry((planes, inplanes, 1, 1))
                visual |= _bn(f"{p}.bn1", planes)
                visual[f"{p}.conv2.weight"] = Entry((planes, planes, 3, 3))
                visual |= _bn(f"{p}.bn2", planes)
                visual[f"{p}.conv3.weight"] = Entry((4 * planes, planes, 1, 1))
                visual |= _bn(f"{p}.bn3", 4 * planes)
                if j == 0 and (i > 0 or inplanes != 4 * planes):
                    visual[f"{p}.downsample.0.weight"] = Entry((4 * planes, inplanes, 1, 1))
                    visual |= _bn(f"{p}.downsample.1", 4 * planes)
                inplanes = 4 * planes
        c = 32 * w
        visual["visual.attnpool.positional_embedding"] = Entry(((image_resolution // 32) ** 2 + 1, c))
        for n in ("k_proj", "q_proj", "v_proj"):
            visual[f"visual.attnpool.{n}.weight"] = Entry((c, c))
            visual[f"visual.attnpool.{n}.bias"] = Entry((c,))
        visual["visual.attnpool.c_proj.weight"] = Entry((embed_dim, c))
        visual["visual.attnpool.c_proj.bias"] = Entry((embed_dim,))
    else:
        if patch_size is None:
            raise ValueError("a ViT image tower needs patch_size")
        w, grid = vision_width, image_resolution // patch_size
        visual["visual.class_embedding"] = Entry((w,))
        visual["visual.positional_embedding"] = Entry((grid * grid + 1, w))
        visual["visual.proj"] = Entry((w, embed_dim))
        visual["visual.conv1.weight"] = Entry((w, 3, patch_size, patch_size))
        visual |= _ln("visual.ln_pre", w)
        for i in range(vision_layers):
            visual |= _resblock(f"visual.transformer.resblocks.{i}", w)
        visual |= _ln("visual.ln_post", w)
    return own | visual | text


def with_dtypes(layout: Layout, dtype_of: Callable[[str], torch.dtype]) -> Layout:
    """``layout`` with every float entry's dtype set by ``dtype_of(key)``."""
    return {k: Entry(e.shape, dtype_of(k) if e.dtype.is_floating_point else e.dtype, e.value) for k, e in layout.items()}


def openai_clip_dtype(key: str) -> torch.dtype:
    """dtype of an entry of OpenAI's released CLIP files (clip/model.py ``convert_weights``):
    conv and linear weights and biases, attention in_proj, text_projection and visual.proj in
    float16; BatchNorm, LayerNorm, embeddings and logit_scale in float32."""
    leaf = key.rsplit(".", 1)[-1]
    if key in ("text_projection", "visual.proj") or leaf in ("in_proj_weight", "in_proj_bias"):
        return torch.float16
    norm = ".bn" in key or ".ln" in key or key.startswith(("ln_", "visual.ln")) or ".downsample.1." in key
    embedding = "embedding" in key
    if norm or embedding or key == "logit_scale":
        return torch.float32
    return torch.float16 if leaf in ("weight", "bias") else torch.float32


# ----------------------------------------------------------------------------------------------
# random contents
# ----------------------------------------------------------------------------------------------
def random_tensor(key: str, entry: Entry, gen: torch.Generator) -> Tensor:
    """A tensor for ``entry`` named ``key``: its fixed value, or random values chosen by the name
    and shape so that a network built from them stays finite and O(1) (see the module docstring)."""
    if entry.value is not None:
        return entry.value.to(entry.dtype).clone()
    shape, leaf = entry.shape, key.rsplit(".", 1)[-1]
    if not entry.dtype.is_floating_point:
        return torch.zeros(shape, dtype=entry.dtype)  # counters (num_batches_tracked)
    if leaf == "running_var":
        t = 0.5 + torch.rand(shape, generator=gen)
    elif leaf == "running_mean":
        t = 0.1 * torch.randn(shape, generator=gen)
    elif leaf == "logit_scale":
        t = torch.full(shape, math.log(100.0))  # OpenAI's and LAION's trained value (clamped at 100)
    elif len(shape) <= 1:
        # 1-d weights are norm scales; biases and class embeddings are small
        t = 1 + 0.1 * torch.randn(shape, generator=gen) if leaf == "weight" else 0.02 * torch.randn(shape, generator=gen)
    elif "embedding" in key or leaf == "relative_position_bias_table":
        t = 0.02 * torch.randn(shape, generator=gen)
    elif leaf in ("text_projection", "proj"):  # stored [in, out]
        t = torch.randn(shape, generator=gen) / math.sqrt(shape[0])
    elif key.startswith("lin") and ".model.1." in key:  # LPIPS heads are non-negative
        t = torch.rand(shape, generator=gen)
    else:
        gain = math.sqrt(2.0) if len(shape) == 4 else 1.0  # convolutions feed ReLUs / SiLUs
        t = torch.randn(shape, generator=gen) * (gain / math.sqrt(math.prod(shape[1:])))
    return t.to(entry.dtype)


def random_state_dict(layout: Layout, gen: torch.Generator) -> dict[str, Tensor]:
    """An OrderedDict of tensors in ``layout`` (see :func:`random_tensor`)."""
    return OrderedDict((k, random_tensor(k, e, gen)) for k, e in layout.items())


# ----------------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------------
_STORAGE_LOCATION: list[str] = []  # set inside _stored_on(); read by the location tagger below


def _location_tagger(storage) -> str | None:
    return _STORAGE_LOCATION[-1] if _STORAGE_LOCATION else None


def _no_deserializer(storage, location):
    return None  # loading goes through torch's own deserializers


@contextmanager
def _stored_on(location: str | None):
    """torch.save records ``location`` as every storage's device (the LPIPS heads were saved from
    ``cuda:0``; loading them needs ``map_location``, as with the real file)."""
    if location is None:
        yield
        return
    if not getattr(_location_tagger, "registered", False):
        # first in torch's tagger list (sorted by priority; torch's own use 10 and up); it answers
        # only inside this context, so every other save is untouched
        torch.serialization.register_package(-7357, _location_tagger, _no_deserializer)
        _location_tagger.registered = True  # type: ignore[attr-defined]
    _STORAGE_LOCATION.append(location)
    try:
        yield
    finally:
        _STORAGE_LOCATION.pop()


@contextmanager
def _atomic(path: Path):
    """A temporary path beside ``path``, renamed onto it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared weight folders unreadable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: object, path: str | os.PathLike, *, legacy: bool = False, location: str | None = None) -> Path:
    """torch.save ``obj`` atomically; ``legacy=True`` writes the pre-1.6 (non-zip) format of
    files published before 2020; ``location`` overrides the recorded storage device."""
    path = Path(path)
    with _atomic(path) as tmp, _stored_on(location):
        torch.save(obj, tmp, _use_new_zipfile_serialization=not legacy)
    return path


class _Holder(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def save_torchscript_archive(state_dict: Mapping[str, Tensor], path: str | os.PathLike, extras: Mapping[str, int] | None = None) -> Path:
    """A TorchScript archive whose ``state_dict()`` is ``state_dict`` plus ``extras`` as int64
    scalars (OpenAI's RN50.pt holds input_resolution, context_length and vocab_size so)."""
    root = _Holder()
    entries = dict(state_dict)
    entries |= {n: torch.tensor(v) for n, v in (extras or {}).items()}
    for key, value in entries.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, _Holder())
            node = getattr(node, name)
        if value.is_floating_point() and value.ndim > 0:
            node.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        else:
            node.register_buffer(leaf, value)
    path = Path(path)
    with _atomic(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is OpenAI's format
        torch.jit.save(torch.jit.script(root), str(tmp))
    return path


def write_merges_file(path: str | os.PathLike, merges: Iterable[tuple[str, str]]) -> Path:
    """A CLIP-format BPE file: a version header, then one merge per line, gzip-compressed."""
    path = Path(path)
    with _atomic(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return path


# ----------------------------------------------------------------------------------------------
# sizes of each file, real and tiny
# ----------------------------------------------------------------------------------------------
def sd21_archs(scale: Scale):
    """(SDUNetArch, VAEArch, TextArch) of the SD file. Tiny: a 2-level 64/128 UNet (head_channels
    64 and 32 norm groups, as configured for the real one), a 4-level VAE of 32-64 channels and a
    2-layer 64-wide text tower with the real vocabulary and context (OpenCLIP token ids)."""
    if scale == "real":
        return SDUNetArch(), VAEArch(), TextArch()
    return (
        SDUNetArch(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False), cross_attention_dim=64),
        VAEArch(block_out_channels=(32, 32, 64, 64), layers_per_block=1),
        TextArch(width=64, layers=2),
    )


def swinir_arch(scale: Scale):
    """DiffBIR's face SwinIR, or a 2 x 2-block, 16-wide one with window 4 for 64 px faces."""
    if scale == "real":
        return SwinIRArch()
    return SwinIRArch(img_size=8, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_feat=16)


def _clip_sizes(kind: str, scale: Scale) -> dict:
    real = {
        "rn50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, patch_size=None,
                     context_length=77, vocab_size=49408, text_width=512, text_layers=12),
        "vit-h-14": dict(embed_dim=1024, image_resolution=224, vision_layers=32, vision_width=1280, patch_size=14,
                         context_length=77, vocab_size=49408, text_width=1024, text_layers=24),
    }[kind]
    if scale == "real":
        return real
    # tiny: one block per stage / two layers, widths of whole 64-channel heads, the real input
    # resolution (the rewards resize to 224), context and vocabulary (the real tokenizer's ids)
    tiny = dict(embed_dim=32, text_width=64, text_layers=2)
    if kind == "rn50":
        tiny |= dict(vision_layers=(1, 1, 1, 1), vision_width=8)  # attention pool: 32 * 8 = 256 = 4 heads
    else:
        tiny |= dict(vision_layers=2, vision_width=64, patch_size=32)
    return real | tiny


def vgg16_widths(scale: Scale) -> tuple[int, ...]:
    return VGG16_WIDTHS if scale == "real" else tuple(w // 8 for w in VGG16_WIDTHS)


def inception_widths(scale: Scale) -> dict[str, int]:
    return dict(FID_INCEPTION_WIDTHS) if scale == "real" else {k: max(4, c // 8) for k, c in FID_INCEPTION_WIDTHS.items()}


# ----------------------------------------------------------------------------------------------
# the layouts of the published files
# ----------------------------------------------------------------------------------------------
def ldm_schedule_buffers(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> dict[str, Tensor]:
    """The noise-schedule buffers of an LDM checkpoint (ldm DDPM.register_schedule, linear betas,
    v_posterior 0), computed in float64 and stored in float32 as there."""
    betas = sd_linear_betas(timesteps, linear_start, linear_end)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: v.float() for k, v in values.items()}


# LitEma's buffers (ldm/modules/ema.py), left in the file after its EMA weights were copied in
_LDM_EMA_COUNTERS: Layout = {
    "model_ema.decay": Entry((), torch.float32, torch.tensor(0.9999)),
    "model_ema.num_updates": Entry((), torch.int32, torch.tensor(0, dtype=torch.int32)),
}
LDM_EXTRA_ENTRIES: tuple[str, ...] = tuple(ldm_schedule_buffers(2)) + tuple(_LDM_EMA_COUNTERS)  # not model weights


def ldm_layout(unet_arch, vae_arch, text_arch) -> Layout:
    """An SD 2.x LDM checkpoint's state_dict (v2-1_512-ema-pruned.ckpt for the default archs), in
    LatentDiffusion.state_dict() order: own buffers, model, model_ema, first_stage_model,
    cond_stage_model (the whole OpenCLIP text tower: ``text_arch.layers`` layers and the projection)."""
    with torch.device("meta"):
        unet, vae = build_unet(unet_arch), build_vae(vae_arch)
    out: Layout = {k: Entry(tuple(v.shape), v.dtype, v) for k, v in ldm_schedule_buffers().items()}
    unet_sd = unet.state_dict()
    out |= layout_of(L.to_original_layout(unet_sd, L.unet_key_map(unet_sd, unet_arch.layers_per_block), L.SD_UNET_PREFIX))
    out |= _LDM_EMA_COUNTERS
    vae_sd = vae.state_dict()
    out |= layout_of(L.to_original_layout(vae_sd, L.vae_key_map(vae_sd, len(vae_arch.block_out_channels)), L.SD_VAE_PREFIX))
    out |= clip_text_layout(
        context_length=text_arch.context_length, vocab_size=text_arch.vocab_size, width=text_arch.width,
        layers=text_arch.layers, embed_dim=text_arch.width, prefix=L.SD_TEXT_PREFIX,
    )
    return out


def ldm_file_state_dict(
    unet: nn.Module, vae: nn.Module, text: nn.Module, *, unet_arch, vae_arch, text_arch, gen: torch.Generator
) -> dict[str, Tensor]:
    """An SD single file's state dict holding these modules' weights (our UNet and VAE of those
    archs, and the text tower SD reads, up to the penultimate layer); what they do not hold (the
    text tower's last layers and projection, the schedule, the EMA counters) is drawn as in a stand-in."""
    sd = random_state_dict(ldm_layout(unet_arch, vae_arch, text_arch), gen)
    unet_sd, vae_sd = unet.state_dict(), vae.state_dict()
    sd.update(L.to_original_layout(unet_sd, L.unet_key_map(unet_sd, unet_arch.layers_per_block), L.SD_UNET_PREFIX))
    sd.update(L.to_original_layout(vae_sd, L.vae_key_map(vae_sd, len(vae_arch.block_out_channels)), L.SD_VAE_PREFIX))
    sd.update({L.SD_TEXT_PREFIX + k: v for k, v in text.state_dict().items()})
    return sd


def controlnet_layout(unet_arch, hint_channels: int = 4) -> Layout:
    """A DiffBIR IRControlNet file (v1_face.pth for the default arch): bare LDM names."""
    with torch.device("meta"):
        cn = ConcatControlNet(unet_arch, hint_channels=hint_channels)
    sd = cn.state_dict()
    return layout_of(L.to_original_layout(sd, L.unet_key_map(sd, unet_arch.layers_per_block)))


def swinir_layout(arch) -> Layout:
    """A DiffBIR SwinIR state dict; the window index tables and shift masks keep their values."""
    with torch.random.fork_rng(devices=[]):  # the module's own initialisation draws from the global RNG
        sd = SwinIR(arch).state_dict()
    return layout_of(sd, keep_values=lambda k: k.endswith(("relative_position_index", "attn_mask")))


def vgg16_layout(widths: tuple[int, ...], classifier_width: int = 4096) -> Layout:
    """A torchvision VGG16 state dict (vgg16-397923af.pth for the default widths): the 13 convs
    and the classifier (classifier_width hidden units, 1000 classes)."""
    with torch.device("meta"):
        out = layout_of(VGG16Features(widths).state_dict())
    shapes = ((classifier_width, widths[-1] * 7 * 7), (classifier_width, classifier_width), (1000, classifier_width))
    for i, (n_out, n_in) in zip((0, 3, 6), shapes):
        out[f"classifier.{i}.weight"] = Entry((n_out, n_in))
        out[f"classifier.{i}.bias"] = Entry((n_out,))
    return out


def lpips_heads_layout(widths: tuple[int, ...]) -> Layout:
    """LPIPS v0.1 vgg.pth for a VGG16 of ``widths``: a 1x1 conv [1, C_l, 1, 1] per tapped layer."""
    with torch.device("meta"):
        channels = VGG16Features(widths).tapped_channels
    return {f"lin{k}.model.1.weight": Entry((1, c, 1, 1)) for k, c in enumerate(channels)}


def inception_layout(widths: dict[str, int] | None = None) -> Layout:
    """FID's Inception v3 in torchvision names, fc 1008 (pt_inception-2015-12-05 for the defaults)."""
    with torch.device("meta"):
        return layout_of(InceptionFeatures(widths).state_dict())


def clip_rn50_layout(scale: Scale) -> Layout:
    """RN50.pt's state dict (without the archive's three attribute entries), OpenAI's dtypes."""
    return with_dtypes(clip_layout(**_clip_sizes("rn50", scale)), openai_clip_dtype)


def vit_h_14_layout(scale: Scale) -> Layout:
    """OpenCLIP ViT-H-14 (laion2b_s32b_b79k and the Face Reward Model fine-tuned from it), float32."""
    return clip_layout(**_clip_sizes("vit-h-14", scale))


# ----------------------------------------------------------------------------------------------
# writers: (path, scale, generator) -> the file
# ----------------------------------------------------------------------------------------------
SD21_GLOBAL_STEP = 220_000  # see the module docstring


def write_sd21(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch({"global_step": SD21_GLOBAL_STEP, "state_dict": random_state_dict(ldm_layout(*sd21_archs(scale)), gen)}, path)


def write_diffbir_controlnet(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    unet_arch, vae_arch, _ = sd21_archs(scale)
    return save_torch(random_state_dict(controlnet_layout(unet_arch, vae_arch.latent_channels), gen), path)


def write_lrpo_controlnet(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    """An LRPO release ControlNet: ``torch.save(controlnet.state_dict())``, the v1_face.pth layout."""
    return write_diffbir_controlnet(path, scale, gen)


def write_diffbir_swinir(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch({"state_dict": random_state_dict(swinir_layout(swinir_arch(scale)), gen)}, path)


def write_face_reward_model(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch({"state_dict": random_state_dict(vit_h_14_layout(scale), gen)}, path)


def write_openclip_vit_h_14(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch(random_state_dict(vit_h_14_layout(scale), gen), path)


def write_vgg16(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    layout = vgg16_layout(vgg16_widths(scale), 4096 if scale == "real" else 64)
    return save_torch(random_state_dict(layout, gen), path, legacy=True)


def write_lpips_heads(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch(random_state_dict(lpips_heads_layout(vgg16_widths(scale)), gen), path, legacy=True, location="cuda:0")


def write_clip_rn50(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    sizes = _clip_sizes("rn50", scale)
    extras = {"input_resolution": sizes["image_resolution"], "context_length": sizes["context_length"], "vocab_size": sizes["vocab_size"]}
    return save_torchscript_archive(random_state_dict(clip_rn50_layout(scale), gen), path, extras)


def write_inception_fid(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return save_torch(random_state_dict(inception_layout(inception_widths(scale)), gen), path, legacy=True)


def random_bpe_merges(gen: torch.Generator, count: int | None = None) -> list[tuple[str, str]]:
    """``count`` BPE merges (default: as many as CLIP's vocabulary uses, 48 894) over lower-case
    letters and digits, each joining two existing tokens into a new one, all distinct."""
    count = MAX_MERGES if count is None else count
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789")
    lefts, rights = list(alphabet), alphabet + [c + END_OF_WORD for c in alphabet]
    seen, merges = set(rights), []
    draws: list[float] = []
    while len(merges) < count:
        if not draws:  # uniform draws in batches: one torch call per 2^16 picks
            draws = torch.rand(2**16, generator=gen, dtype=torch.float64).tolist()
        a, b = lefts[int(draws.pop() * len(lefts))], rights[int(draws.pop() * len(rights))]
        token = a + b
        if token in seen:
            continue
        seen.add(token)
        merges.append((a, b))
        rights.append(token)
        if not token.endswith(END_OF_WORD):  # only word-final tokens carry the end marker
            lefts.append(token)
    return merges


def write_bpe_vocab(path: Path, scale: Scale, gen: torch.Generator) -> Path:
    return write_merges_file(path, random_bpe_merges(gen))


# registry name -> writer: every file of the paper's run (policy, the "paper" reward, FID)
STANDINS: dict[str, Callable[[Path, Scale, torch.Generator], Path]] = {
    "sd21-base": write_sd21,
    "diffbir-v1-face": write_diffbir_controlnet,
    "diffbir-swinir-face": write_diffbir_swinir,
    "lrpo-fidelity": write_lrpo_controlnet,  # the release's trained ControlNets (own seeds: they differ)
    "lrpo-perception": write_lrpo_controlnet,
    "face-reward-model": write_face_reward_model,
    "openclip-vit-h-14": write_openclip_vit_h_14,
    "vgg16-imagenet": write_vgg16,
    "lpips-vgg-v0.1": write_lpips_heads,
    "clip-rn50": write_clip_rn50,
    "inception-fid": write_inception_fid,
    "clip-bpe-vocab": write_bpe_vocab,
}


def file_generator(name: str, seed: int = 0) -> torch.Generator:
    """The generator of one file: depends on (seed, name) only, so ``--only`` changes nothing."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def write_standin(name: str, folder: str | os.PathLike, scale: Scale = "real", seed: int = 0) -> Path:
    """Write the stand-in of registry file ``name`` into ``folder`` under its registry file name."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if name not in STANDINS:
        raise KeyError(f"no stand-in writer for {name!r}; known: {', '.join(STANDINS)}")
    return STANDINS[name](Path(folder) / get_entry(name).filename, scale, file_generator(name, seed))


def write_standins(
    folder: str | os.PathLike,
    scale: Scale = "real",
    only: Iterable[str] | None = None,
    seed: int = 0,
    on_written: Callable[[str, Path], None] | None = None,
) -> list[Path]:
    """Write the stand-ins of ``only`` (default: all of :data:`STANDINS`), one file at a time."""
    names = list(only) if only else list(STANDINS)
    unknown = [n for n in names if n not in STANDINS]
    if unknown:
        raise KeyError(f"no stand-in writer for {', '.join(unknown)}; known: {', '.join(STANDINS)}")
    paths = []
    for name in names:
        path = write_standin(name, folder, scale, seed)
        paths.append(path)
        if on_written is not None:
            on_written(name, path)
    return paths


__all__ = [
    "Entry",
    "Layout",
    "LDM_EXTRA_ENTRIES",
    "SCALES",
    "STANDINS",
    "clip_layout",
    "clip_rn50_layout",
    "clip_text_layout",
    "controlnet_layout",
    "file_generator",
    "inception_layout",
    "inception_widths",
    "layout_of",
    "ldm_file_state_dict",
    "ldm_layout",
    "ldm_schedule_buffers",
    "lpips_heads_layout",
    "openai_clip_dtype",
    "random_bpe_merges",
    "random_state_dict",
    "random_tensor",
    "save_torch",
    "save_torchscript_archive",
    "sd21_archs",
    "swinir_arch",
    "swinir_layout",
    "vgg16_layout",
    "vgg16_widths",
    "vit_h_14_layout",
    "with_dtypes",
    "write_merges_file",
    "write_standin",
    "write_standins",
]
