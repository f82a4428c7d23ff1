"""The full-scale latent policy: Stable Diffusion 2.1-base + DiffBIR's IRControlNet + SwinIR stage 1.

What it computes (SPEC section 1; DiffBIR ``diffbir/model/cldm.py`` and ``pipeline.py``):

    lq      [B, 3, H, W] in [0, 1]  -> resized to R x R (R = 512; bicubic, antialiased)
    s1      = SwinIR(lq)            stage-1 restoration, nominally [0, 1], not clamped (as DiffBIR)
    cond    = E(2 s1 - 1).mode * 0.18215            condition latent [B, 4, R/8, R/8]
    x_0     = E(2 hq - 1).mode * 0.18215            diffusion space (the GT path uses the mode;
                                                    the reference samples the posterior)
    eps     = UNet(x_t, t, c, residuals = ControlNet(cat[x_t, cond], t, c))    eps-prediction
            with c = the empty prompt's OpenCLIP context [1, 77, 1024] (penultimate layer, after
            ln_final), computed once and cached beside the weights
    image   = (D(x_0 / 0.18215) + 1) / 2 clamped to [0, 1]
    at inference only: image <- wavelet colour fix (high band of the image + low band of s1)

The ControlNet is DiffBIR's variant: no hint network; its first convolution takes the noisy
latent and the condition latent stacked (8 channels); its 12 encoder features and the middle
feature pass through zero-initialised 1x1 convolutions and are added, times ``control_scale``,
to the UNet's 12 skip connections and its middle block (13 residuals). Only the ControlNet (or
LoRA adapters) is trainable; UNet, VAE, text tower and SwinIR are frozen.

Precision: ``cfg.precision = "bf16"`` stores the frozen weights in bf16 and runs every method
under bf16 autocast (the trainable ControlNet keeps fp32 master weights); outputs are float32.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets.clip import Transformer
from ..precision import autocast_context
from ..weights import cache_dir
from . import sd_loaders as L
from .colorfix import wavelet_color_fix
from .latent_config import LatentPolicyConfig, SDUNetArch, TextArch, VAEArch
from .sampling import sample_generators, sample_trajectories
from .sd_sizes import swinir_arch_from_state_dict, text_arch_from_ldm, unet_arch_from_ldm, vae_arch_from_ldm
from .swinir import RGB_MEAN, SwinIR

log = logging.getLogger(__name__)

CONTEXT_CACHE_SUFFIX = ".empty-prompt.safetensors"
RANDOM_INIT_SEED = 0  # random_init builds the same weights every time without touching global RNG


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------
def _block_types(arch: SDUNetArch) -> tuple[tuple[str, ...], tuple[str, ...]]:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.attention_levels))
    return down, up


def build_unet(arch: SDUNetArch) -> nn.Module:
    """A diffusers UNet2DConditionModel of the SD 2.x design (random weights)."""
    from diffusers import UNet2DConditionModel  # optional: diffusers (the sd extra)

    down, up = _block_types(arch)
    return UNet2DConditionModel(
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=arch.block_out_channels,
        layers_per_block=arch.layers_per_block,
        cross_attention_dim=arch.cross_attention_dim,
        attention_head_dim=arch.heads,  # diffusers' name for the number of heads (SD 2.x: 5, 10, 20, 20)
        use_linear_projection=arch.use_linear_projection,
        transformer_layers_per_block=arch.transformer_depth,
        norm_num_groups=arch.norm_num_groups,
    )


def build_vae(arch: VAEArch) -> nn.Module:
    """A diffusers AutoencoderKL of the SD design (random weights)."""
    from diffusers import AutoencoderKL  # optional: diffusers (the sd extra)

    n = len(arch.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.block_out_channels,
        layers_per_block=arch.layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_num_groups,
    )


class ConcatControlNet(nn.Module):
    """DiffBIR's IRControlNet: the UNet encoder on cat[x_t, cond] plus 13 zero convolutions.

    forward(x_t [B, C, h, w], t [B] long, context [B, L, D], cond [B, C_hint, h, w])
        -> (12 encoder residuals, middle residual), matching the UNet's skip connections.
    Parameter names follow diffusers' ControlNetModel (without its hint network), so the
    UNet -> LDM name map of :mod:`.sd_loaders` covers it (plus zero_convs / middle_block_out).
    """

    def __init__(self, arch: SDUNetArch, hint_channels: int):
        super().__init__()
        from diffusers import ControlNetModel  # optional: diffusers (the sd extra)

        down, _ = _block_types(arch)
        base = ControlNetModel(
            in_channels=arch.latent_channels + hint_channels,
            conditioning_channels=3,
            down_block_types=down,
            block_out_channels=arch.block_out_channels,
            layers_per_block=arch.layers_per_block,
            cross_attention_dim=arch.cross_attention_dim,
            attention_head_dim=arch.heads,
            use_linear_projection=arch.use_linear_projection,
            transformer_layers_per_block=arch.transformer_depth,
            norm_num_groups=arch.norm_num_groups,
            conditioning_embedding_out_channels=(16,),  # the hint network is dropped below
        )
        # the parts DiffBIR's ControlNet has; ControlNetModel's hint network is not one of them
        self.time_proj = base.time_proj
        self.time_embedding = base.time_embedding
        self.conv_in = base.conv_in
        self.down_blocks = base.down_blocks
        self.mid_block = base.mid_block
        self.controlnet_down_blocks = base.controlnet_down_blocks
        self.controlnet_mid_block = base.controlnet_mid_block

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, cond: Tensor) -> tuple[list[Tensor], Tensor]:
        emb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        h = self.conv_in(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))
        features = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = block(hidden_states=h, temb=emb)
            features.extend(res)
        h = self.mid_block(h, emb, encoder_hidden_states=context)
        down = [zc(f) for zc, f in zip(self.controlnet_down_blocks, features)]
        return down, self.controlnet_mid_block(h)


class OpenCLIPTextTower(nn.Module):
    """The OpenCLIP text transformer up to the layer SD 2.x reads (penultimate), then ln_final.

    Parameter names are those under ``cond_stage_model.model.`` in SD 2.x files; only the first
    ``layers - skip_last_layers`` blocks are held. forward(tokens [N, L] long) -> [N, L, width].
    """

    def __init__(self, arch: TextArch):
        super().__init__()
        self.arch = arch
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.width)
        self.positional_embedding = nn.Parameter(torch.randn(arch.context_length, arch.width) * 0.01)
        # exact GELU: OpenCLIP's LAION ViT-H-14 (quick_gelu False)
        self.transformer = Transformer(arch.width, arch.layers - arch.skip_last_layers, arch.heads, quick_gelu=False)
        self.ln_final = nn.LayerNorm(arch.width)

    def empty_prompt_tokens(self) -> Tensor:
        """[1, L]: start token, end token, then zeros (OpenCLIP's tokenize(""))."""
        tokens = torch.zeros(1, self.arch.context_length, dtype=torch.long)
        tokens[0, 0] = self.arch.vocab_size - 2  # <|startoftext|> (49406)
        tokens[0, 1] = self.arch.vocab_size - 1  # <|endoftext|> (49407)
        return tokens

    def forward(self, tokens: Tensor) -> Tensor:
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu_(1)  # True = may not attend
        return self.ln_final(self.transformer(x, causal))


# ----------------------------------------------------------------------------------------------
# LoRA (built in: peft imports transformers, which this package avoids)
# ----------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(x)); A ~ kaiming-uniform, B = 0, so it starts as ``base``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank
        base.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scale

    def merged_weight(self) -> Tensor:
        w = self.base_layer.weight
        return w + (self.lora_B.weight.float() @ self.lora_A.weight.float()).to(w.dtype) * self.scale


def add_lora(module: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every nn.Linear whose qualified name ends with a target (``to_q``, ``to_out.0`` ...).

    Returns the new trainable parameters; raises if no layer matched.
    """
    params: list[nn.Parameter] = []
    matches = [
        name for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not matches:
        raise ValueError(f"LoRA targets {targets} match no linear layer of {type(module).__name__}")
    for name in matches:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        wrapped = LoRALinear(getattr(parent, leaf), rank, alpha)
        setattr(parent, leaf, wrapped)
        params += [wrapped.lora_A.weight, wrapped.lora_B.weight]
    return params


def merged_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict with every LoRALinear folded into a plain linear layer's names."""
    sd = dict(module.state_dict())
    for name, child in module.named_modules():
        if isinstance(child, LoRALinear):
            p = f"{name}." if name else ""
            for k in [k for k in sd if k.startswith(p + "lora_") or k.startswith(p + "base_layer.")]:
                del sd[k]
            sd[p + "weight"] = child.merged_weight().detach()
            if child.base_layer.bias is not None:
                sd[p + "bias"] = child.base_layer.bias.detach()
    return sd


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Turn on diffusers' per-block activation checkpointing in every block of ``module``."""

    def checkpoint_call(block: nn.Module, *args):
        return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

    count = 0
    for m in module.modules():
        if hasattr(m, "gradient_checkpointing"):
            m._gradient_checkpointing_func = checkpoint_call
            m.gradient_checkpointing = True
            count += 1
    return count


# ----------------------------------------------------------------------------------------------
# the policy
# ----------------------------------------------------------------------------------------------
class LatentPolicy(nn.Module):
    """SD 2.1 + ControlNet latent policy implementing :class:`lrpo.policies.Policy`.

    ``LatentPolicy(cfg)`` builds the networks with random weights; :meth:`from_config` (or
    :func:`build_latent_policy`) also loads the files named by ``cfg`` and prepares training
    (freezing, LoRA, checkpointing, precision).
    """

    prediction = "eps"
    resize_antialias = True  # faces resized in and out antialiased both ways, as DiffBIR does
    compilable = False  # samples through its own code (restore_faces), never a compiled forward

    def __init__(self, cfg: LatentPolicyConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.unet = build_unet(cfg.unet)
        self.controlnet = ConcatControlNet(cfg.unet, hint_channels=cfg.vae.latent_channels)
        self.vae = build_vae(cfg.vae)
        self.stage1 = SwinIR(cfg.swinir) if cfg.stage1 == "swinir" else None
        # the empty prompt's context; derived from the text weights, so not saved with the policy
        self.register_buffer("empty_context", torch.zeros(1, cfg.text.context_length, cfg.text.width), persistent=False)
        self._trainable = list(self.controlnet.parameters())
        self._prepared = False

    # the trainable parameters are kept by name: FSDP replaces parameter objects when it shards
    @property
    def _trainable(self) -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self._trainable_names]

    @_trainable.setter
    def _trainable(self, params: list[nn.Parameter]) -> None:
        name_of = {id(p): n for n, p in self.named_parameters()}
        object.__setattr__(self, "_trainable_names", [name_of[id(p)] for p in params])

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: LatentPolicyConfig, device: torch.device | str = "cpu") -> "LatentPolicy":
        """Build, load every file ``cfg`` names (strictly), compute or read the cached context,
        freeze the frozen parts, add LoRA / checkpointing / precision, move to ``device``."""
        cfg.validate()
        if cfg.random_init:
            device = torch.device(device)
            # built on the target device (a full-size CPU initialisation takes a minute); the
            # global RNG state is restored afterwards. Same weights on the same kind of device.
            forked = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=forked), device:
                torch.manual_seed(RANDOM_INIT_SEED)
                policy = cls(cfg)
            L.init_controlnet_from_unet(policy.controlnet, policy.unet)
            # no text weights: a fixed N(0, 1) draw stands in for the empty-prompt context
            g = torch.Generator().manual_seed(RANDOM_INIT_SEED)
            policy.empty_context.copy_(torch.randn(policy.empty_context.shape, generator=g).to(policy.empty_context.device))
        else:
            files = PolicyFiles.read(cfg)
            cfg = sizes_from_files(cfg, files)  # the networks take the files' sizes
            # every persistent tensor is about to be overwritten by a strict load: skip the random
            # initialisation of ~1.3 B parameters (tens of seconds on a CPU)
            with torch.device("meta"):
                policy = cls(cfg)
            policy.to_empty(device="cpu")
            policy._reset_derived_buffers()
            policy.load_weights(files)
            del files  # releases the memory-mapped file contents
        policy.prepare_training()
        return policy.to(device)

    def _reset_derived_buffers(self) -> None:
        """Set the non-persistent buffers (not in any file) after ``to_empty``."""
        with torch.no_grad():
            self.empty_context.zero_()
            if self.stage1 is not None:
                self.stage1.mean.copy_(torch.tensor(RGB_MEAN).view(1, 3, 1, 1))

    def load_weights(self, files: "PolicyFiles | None" = None) -> None:
        """Load SD (UNet, VAE, empty-prompt context), the ControlNet and the SwinIR from cfg
        (``files``: their contents, already read by :meth:`PolicyFiles.read`)."""
        cfg = self.cfg
        if self._prepared:
            raise RuntimeError("load_weights must run before prepare_training (LoRA renames layers)")
        files = files if files is not None else PolicyFiles.read(cfg)
        sd_path = Path(cfg.sd_checkpoint).expanduser()
        cache = Path(cfg.empty_prompt_embedding).expanduser() if cfg.empty_prompt_embedding else _default_cache_path(sd_path)
        with torch.device("meta"):  # loaded strictly below; no random initialisation needed
            text = OpenCLIPTextTower(cfg.text)
        text.to_empty(device="cpu")
        if files.sd is None:
            report = L.load_diffusers_folder(sd_path, unet=self.unet, vae=self.vae, text=text)
        else:
            report = L.load_sd_ldm(files.sd, unet=self.unet, vae=self.vae, text=text, layers_per_block=cfg.unet.layers_per_block, source=str(sd_path))
        log.info("loaded %s: %s; ignored %d non-model entries", sd_path, report.loaded, len(report.other_entries))
        self.empty_context.copy_(_empty_context(text, cache, source=sd_path.name))
        del text
        if files.controlnet is not None:
            L.load_diffbir_controlnet(files.controlnet, self.controlnet, layers_per_block=cfg.unet.layers_per_block, source=cfg.controlnet_checkpoint)
        else:
            L.init_controlnet_from_unet(self.controlnet, self.unet)
        if self.stage1 is not None:
            L.load_swinir_state_dict(files.swinir, self.stage1, source=cfg.swinir_checkpoint)

    def prepare_training(self) -> None:
        """Freeze everything but the ControlNet (or LoRA), add LoRA, checkpointing, bf16 storage."""
        if self._prepared:
            return
        cfg = self.cfg
        self.requires_grad_(False)
        if cfg.lora_rank:
            alpha = cfg.lora_alpha or float(cfg.lora_rank)
            forked = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=forked):  # same adapters every time, global RNG untouched
                torch.manual_seed(RANDOM_INIT_SEED)
                self._trainable = add_lora(self.controlnet, tuple(cfg.lora_targets), cfg.lora_rank, alpha)
                if cfg.lora_unet:
                    self._trainable += add_lora(self.unet, tuple(cfg.lora_targets), cfg.lora_rank, alpha)
        else:
            self._trainable = list(self.controlnet.parameters())
        for p in self._trainable:
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.unet)
            enable_gradient_checkpointing(self.controlnet)
        if cfg.precision == "bf16":
            trainable = {id(p) for p in self._trainable}
            for p in self.parameters():
                if id(p) not in trainable:
                    p.data = p.data.to(torch.bfloat16)
        self._prepared = True
        self.train(self.training)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.cfg.resolution)

    @property
    def device(self) -> torch.device:
        return self.empty_context.device

    def _autocast(self):
        return autocast_context(self.device, self.cfg.precision)

    def train(self, mode: bool = True) -> "LatentPolicy":
        super().train(mode)
        for frozen in (self.unet, self.vae, self.stage1):  # no dropout/statistics: keep them eval
            if frozen is not None:
                frozen.eval()
        return self

    def _resize(self, images: Tensor) -> Tensor:
        r = self.cfg.resolution
        if images.shape[-2:] != (r, r):
            # antialias=True in both directions, as DiffBIR's resize_short_edge_to (for upscaling
            # it selects PIL's bicubic, a = -0.5, rather than torch's plain a = -0.75)
            images = F.interpolate(images.float(), size=(r, r), mode="bicubic", align_corners=False, antialias=True)
        return images

    def _chunks(self, x: Tensor) -> tuple[Tensor, ...]:
        n = self.cfg.vae_chunk
        return x.split(n) if n else (x,)

    @torch.no_grad()
    def vae_encode(self, images: Tensor) -> Tensor:
        """images [B, 3, R, R] in [0, 1] -> latent mode * latent_scale [B, 4, R/8, R/8] float32."""
        x = images.to(self.device) * 2 - 1
        with self._autocast():
            z = torch.cat([self.vae.encode(c).latent_dist.mode().float() for c in self._chunks(x)])
        return z * self.cfg.latent_scale

    # -- Policy protocol -------------------------------------------------------------------
    @torch.no_grad()
    def stage1_image(self, lq: Tensor) -> Tensor:
        """LQ [B, 3, H, W] in [0, 1] -> the stage-1 image [B, 3, R, R] (float32, not clamped)."""
        x = self._resize(lq.to(self.device))
        if self.stage1 is None:
            return x.float()
        with self._autocast():
            return self.stage1(x).float()

    def condition(self, lq: Tensor) -> Tensor:
        """LQ [B, 3, H, W] in [0, 1] -> condition latent [B, 4, R/8, R/8] float32."""
        return self.vae_encode(self.stage1_image(lq))

    def encode(self, images: Tensor, cond: Tensor) -> Tensor:
        """Clean images [B, 3, H, W] in [0, 1] -> x_0 latents [B, 4, R/8, R/8] float32."""
        return self.vae_encode(self._resize(images))

    @torch.no_grad()
    def decode(self, x0: Tensor, cond: Tensor, clamp: bool = True) -> Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1] float32 (``clamp=False``: the
        decoder's (x + 1) / 2 as it is, which DiffBIR's colour fix takes)."""
        z = x0.to(self.device) / self.cfg.latent_scale
        with self._autocast():
            x = torch.cat([self.vae.decode(c, return_dict=False)[0].float() for c in self._chunks(z)])
        return ((x + 1) / 2).clamp(0, 1) if clamp else (x + 1) / 2

    def sample_shape(self, cond: Tensor) -> tuple[int, ...]:
        return (cond.shape[0], self.cfg.unet.latent_channels, cond.shape[-2], cond.shape[-1])

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps [B, 4, h, w] float32 for x_t [B, 4, h, w] at integer timesteps t [B] (or scalar)."""
        b = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(b)
        context = self.empty_context.expand(b, -1, -1)
        with self._autocast():
            down, mid = self.controlnet(x_t, t, context, cond)
            if self.cfg.control_scale != 1.0:
                down = [d * self.cfg.control_scale for d in down]
                mid = mid * self.cfg.control_scale
            eps = self.unet(
                x_t, t, encoder_hidden_states=context,
                down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
            )[0]
        return eps.float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The ControlNet's parameters, or only the LoRA adapters when lora_rank > 0."""
        return list(self._trainable)

    def fsdp_units(self) -> list[nn.Module]:
        """What ``engine=fsdp`` shards, inner first: each ControlNet block, then the ControlNet."""
        return [*self.controlnet.down_blocks, self.controlnet.mid_block, self.controlnet]

    # -- saving what training changes --------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the entries training changes (policy-level names): a few hundred MB, not 5 GB."""
        ids = {id(p) for p in self._trainable}
        names = {n for n, p in self.named_parameters() if id(p) in ids}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, sd: dict[str, Tensor], source: str = "state dict") -> None:
        """Strict inverse of :meth:`trainable_state_dict` (names and shapes must match exactly)."""
        own = self.trainable_state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise L.WeightsMismatchError(
                f"{source} does not match the trainable weights of this policy: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}, shape mismatches {shapes[:8]} (LoRA settings must match too)"
            )
        with torch.no_grad():
            params = dict(self.named_parameters())
            for k, v in sd.items():
                params[k].copy_(v)

    def inference_only(self) -> "LatentPolicy":
        """This policy, only restoring from now on: nothing changes (it keeps its precision's numerics)."""
        return self

    def restore_faces(self, sampler, lq: Tensor, seeds: list[int], precision: str = "fp32", forward=None) -> Tensor:
        """The Policy protocol's restore: sample, decode and colour-fix (see :func:`restore_faces`).

        ``precision`` is not taken: this policy stores its frozen weights in ``cfg.precision`` when
        built (load_policy's ``precision`` sets it) and samples in it. It takes no compiled
        ``forward`` (``compilable`` is False)."""
        if forward is not None:
            raise ValueError("the latent policy samples through its own code; it takes no compiled forward")
        return restore_faces(self, sampler, lq, seeds, precision=self.cfg.precision)

    def controlnet_state_dict(self) -> dict[str, Tensor]:
        """The ControlNet's weights in its plain layout (LoRA merged), for export to DiffBIR."""
        return merged_state_dict(self.controlnet)


@dataclass
class PolicyFiles:
    """The tensors of the files a :class:`LatentPolicyConfig` names, read once (memory-mapped
    where the format allows): the SD single file (None for a diffusers folder, read at load time),
    the DiffBIR ControlNet (None: initialised from the UNet) and the SwinIR (None: no stage 1)."""

    sd: dict[str, Tensor] | None
    controlnet: dict[str, Tensor] | None
    swinir: dict[str, Tensor] | None

    @classmethod
    def read(cls, cfg: LatentPolicyConfig) -> "PolicyFiles":
        def read(path: str) -> dict[str, Tensor]:
            if cfg.trust_pickle and Path(path).suffix != ".safetensors":
                print(f"lrpo: warning: policy.trust_pickle is on: {path} is read with full unpickling, which runs "
                      f"any code the file holds", file=sys.stderr)
            return L.read_checkpoint(Path(path).expanduser(), trust_pickle=cfg.trust_pickle)

        sd_path = Path(cfg.sd_checkpoint).expanduser()
        return cls(
            sd=None if sd_path.is_dir() else read(cfg.sd_checkpoint),
            controlnet=(None if not cfg.controlnet_checkpoint
                        else L.read_reference_controlnet(Path(cfg.controlnet_checkpoint).expanduser())
                        if cfg.controlnet_format == "reference" else read(cfg.controlnet_checkpoint)),
            swinir=read(cfg.swinir_checkpoint) if cfg.stage1 == "swinir" else None,
        )


def sizes_from_files(cfg: LatentPolicyConfig, files: PolicyFiles) -> LatentPolicyConfig:
    """``cfg`` with the network sizes the files hold (UNet, VAE and text tower from the SD file,
    SwinIR from its file); what shapes cannot tell (head_channels, norm groups, text heads) stays
    as configured. The ControlNet file must fit the SD file's UNet. Logs the sizes that differ
    from the config's, so a config describing other files is visible, not silently obeyed."""
    unet, vae, text, swinir = cfg.unet, cfg.vae, cfg.text, cfg.swinir
    if files.sd is not None:
        unet = unet_arch_from_ldm(files.sd, cfg.unet)
        vae = vae_arch_from_ldm(files.sd, cfg.vae)
        text = text_arch_from_ldm(files.sd, cfg.text)
    if files.controlnet is not None:
        cn = unet_arch_from_ldm(L.controlnet_state_dict_from_file(files.controlnet), unet, prefix="")
        cn = dataclasses.replace(cn, latent_channels=unet.latent_channels)  # its input also takes the condition
        if cn != unet:
            diff = _field_changes("unet", unet, cn)
            raise L.WeightsMismatchError(
                f"{cfg.controlnet_checkpoint} is a ControlNet for another UNet than the one in {cfg.sd_checkpoint}: "
                + "; ".join(f"{name}: SD file {a}, ControlNet file {b}" for name, a, b in diff)
            )
    if files.swinir is not None:
        swinir = swinir_arch_from_state_dict(files.swinir, cfg.swinir)
    out = dataclasses.replace(cfg, unet=unet, vae=vae, text=text, swinir=swinir)
    changes = [c for part in ("unet", "vae", "text", "swinir") for c in _field_changes(part, getattr(cfg, part), getattr(out, part))]
    if changes:
        log.warning(
            "the model files' sizes differ from the policy config; using the files': %s",
            "; ".join(f"{name} {a} -> {b}" for name, a, b in changes),
        )
    out.validate()
    return out


def _field_changes(prefix: str, a, b) -> list[tuple[str, object, object]]:
    return [
        (f"{prefix}.{f.name}", getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


def _default_cache_path(sd_path: Path) -> Path:
    return (sd_path / "empty-prompt.safetensors") if sd_path.is_dir() else sd_path.with_name(sd_path.name + CONTEXT_CACHE_SUFFIX)


def _empty_context(text: OpenCLIPTextTower, cache: Path, source: str) -> Tensor:
    """The cached context if it was made from these text weights, else compute and cache it."""
    fp = L.text_fingerprint(text.state_dict())
    fallback = cache_dir() / "empty-prompt" / f"{fp[:16]}.safetensors"
    for path in (cache, fallback):
        ctx = L.read_cached_context(path, fp)
        if ctx is not None:
            return ctx
    with torch.no_grad():
        ctx = text.float().eval()(text.empty_prompt_tokens()).float()
    for path in (cache, fallback):
        try:
            L.write_cached_context(path, ctx, fp, source)
            break
        except OSError as err:
            warnings.warn(f"could not cache the empty-prompt context at {path}: {err}", stacklevel=3)
    return ctx


def build_latent_policy(cfg: LatentPolicyConfig, device: torch.device | str = "cpu") -> LatentPolicy:
    return LatentPolicy.from_config(cfg, device)


@torch.no_grad()
def restore_faces(policy: LatentPolicy, sampler, lq: Tensor, seeds: list[int], precision: str = "fp32", color_fix: bool | None = None) -> Tensor:
    """LQ faces [B, 3, H, W] in [0, 1] -> restored [B, 3, R, R] in [0, 1], DiffBIR style.

    Samples from per-image seeds, decodes, and (``color_fix`` None = ``cfg.color_fix``) applies
    the wavelet colour fix against the stage-1 image before clamping.
    """
    s1 = policy.stage1_image(lq)
    cond = policy.vae_encode(s1)
    traj = sample_trajectories(policy, sampler, cond, sample_generators(seeds), record=False, precision=precision)
    if color_fix is None:
        color_fix = policy.cfg.color_fix == "wavelet"
    if not color_fix:
        return policy.decode(traj.sample, cond)
    # as DiffBIR's pipeline: wavelet_reconstruction((decoded + 1) / 2, stage-1 image), unclamped, then clamp
    return wavelet_color_fix(policy.decode(traj.sample, cond, clamp=False), s1).clamp(0, 1)


__all__ = [
    "ConcatControlNet",
    "LatentPolicy",
    "LoRALinear",
    "OpenCLIPTextTower",
    "PolicyFiles",
    "add_lora",
    "build_latent_policy",
    "build_unet",
    "build_vae",
    "enable_gradient_checkpointing",
    "merged_state_dict",
    "restore_faces",
    "sizes_from_files",
]
