"""Configuration of the full-scale latent policy: SD 2.1-base + DiffBIR ControlNet + stage-1 SwinIR.

Defaults are the reference setup (SPEC section 1; DiffBIR ``configs/inference/cldm.yaml`` and
``swinir.yaml``; LRPO ``configs/train/train_lrpo.yaml``). ``preset("tiny")`` keeps every code path
but shrinks each network so tests and CPU benchmarks run in seconds. The dataclasses load from
YAML through :func:`lrpo.config.from_dict` like every other section (unknown keys are errors).

Loading from files (``random_init: false``), the network sizes come from the files' tensors
(:func:`lrpo.policies.latent.sizes_from_files`): the unet/vae/text/swinir sections then only supply
what shapes cannot tell (head_channels, norm groups, text heads, skip_last_layers), and the policy's
``cfg`` holds the files' sizes, so a checkpoint's saved config rebuilds the same networks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config import ConfigError
from .swinir import SwinIRArch


@dataclass
class SDUNetArch:
    """The SD 2.1 UNet, and the ControlNet that copies its encoder (LDM names in comments)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # model_channels * channel_mult
    layers_per_block: int = 2  # num_res_blocks
    # levels with a cross-attention transformer after each ResBlock (attention_resolutions [4, 2, 1])
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    head_channels: int = 64  # num_head_channels: heads = channels / 64 (SD 2.x)
    cross_attention_dim: int = 1024  # context_dim: width of the text embedding
    transformer_depth: int = 1
    use_linear_projection: bool = True  # use_linear_in_transformer (SD 2.x)
    norm_num_groups: int = 32
    latent_channels: int = 4

    def validate(self, prefix: str) -> None:
        ch = self.block_out_channels
        if not ch or len(self.attention_levels) != len(ch):
            raise ConfigError(f"{prefix}.attention_levels must have one entry per block_out_channels level, got {self.attention_levels} for {ch}")
        for c in ch:
            if c % self.norm_num_groups:
                raise ConfigError(f"{prefix}.block_out_channels entry {c} is not divisible by norm_num_groups={self.norm_num_groups}")
            if c % self.head_channels:
                raise ConfigError(f"{prefix}.block_out_channels entry {c} is not divisible by head_channels={self.head_channels}")
        if self.layers_per_block < 1 or self.transformer_depth < 1:
            raise ConfigError(f"{prefix}.layers_per_block and transformer_depth must be >= 1")

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per level (diffusers calls this ``attention_head_dim``, confusingly)."""
        return tuple(c // self.head_channels for c in self.block_out_channels)


@dataclass
class VAEArch:
    """The SD AutoencoderKL (LDM ``first_stage_config.ddconfig``)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # ch * ch_mult
    layers_per_block: int = 2  # num_res_blocks
    latent_channels: int = 4  # z_channels
    norm_num_groups: int = 32

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, prefix: str) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"{prefix}.block_out_channels {self.block_out_channels} must be divisible by norm_num_groups={self.norm_num_groups}")


@dataclass
class TextArch:
    """OpenCLIP ViT-H-14 text tower (SD 2.x ``cond_stage_model``), used once for the empty prompt."""

    width: int = 1024
    layers: int = 24  # layers of the OpenCLIP model; SD 2.x reads the penultimate one
    heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408  # start token = vocab_size - 2, end token = vocab_size - 1
    skip_last_layers: int = 1  # FrozenOpenCLIPEmbedder(layer="penultimate")

    def validate(self, prefix: str) -> None:
        if self.width % self.heads:
            raise ConfigError(f"{prefix}.width={self.width} must be divisible by heads={self.heads}")
        if not 0 <= self.skip_last_layers < self.layers:
            raise ConfigError(f"{prefix}.skip_last_layers must be in [0, layers), got {self.skip_last_layers}")
        if self.context_length < 2 or self.vocab_size < 3:
            raise ConfigError(f"{prefix}: context_length >= 2 and vocab_size >= 3 are needed for start/end tokens")


@dataclass
class LatentPolicyConfig:
    """The SD 2.1 + ControlNet latent policy (``policy.kind: sd21_controlnet``)."""

    kind: Literal["sd21_controlnet"] = "sd21_controlnet"
    resolution: int = 512  # face side in pixels; latents are resolution / 8
    # weights (see lrpo weights list): an LDM single file (v2-1_512-ema-pruned.ckpt / .safetensors)
    # or a diffusers folder (unet/, vae/, text_encoder/)
    sd_checkpoint: str = ""
    # DiffBIR IRControlNet (v1_face.pth); "" initialises the ControlNet from the UNet encoder
    # (zero convolutions at zero), as DiffBIR does before its own training
    controlnet_checkpoint: str = ""
    # "reference": read the ControlNet file exactly as the LRPO release's inference does (a plain
    # state dict, {"state_dict": ...}, "module." keys; torch.save only, weights_only) and refuse
    # any other form by name; "any": also lrpo / ControlNet training saves and safetensors
    controlnet_format: Literal["any", "reference"] = "any"
    stage1: Literal["swinir", "none"] = "swinir"  # "none": the resized LQ is the condition image
    swinir_checkpoint: str = ""  # DiffBIR face_swinir_v1.ckpt
    # cached empty-prompt context [1, 77, 1024]; "" = beside sd_checkpoint (written on first use)
    empty_prompt_embedding: str = ""
    # random weights of the configured sizes, no file read (tests, benchmarks); the empty-prompt
    # context is then a fixed N(0, 1) draw
    random_init: bool = False
    trust_pickle: bool = False  # allow full unpickling of .ckpt/.pth files (only for trusted files)
    latent_scale: float = 0.18215  # SD latent scale factor
    control_scale: float = 1.0  # multiplies all 13 ControlNet residuals (DiffBIR "strength")
    # "bf16": frozen UNet/VAE/SwinIR weights stored in bf16 and every policy call under bf16
    # autocast; the trainable ControlNet (or LoRA) keeps fp32 master weights
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False  # recompute UNet/ControlNet activations in backward
    # LoRA (ours): rank 0 trains the whole ControlNet (the reference); rank > 0 trains only
    # low-rank adapters on the named linear layers of the ControlNet (and of the UNet if lora_unet)
    lora_rank: int = 0
    lora_alpha: float = 0.0  # 0 = lora_rank (scale 1)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_unet: bool = False
    color_fix: Literal["wavelet", "none"] = "wavelet"  # applied at inference, never to rewards
    # images per VAE encode/decode call: the decoder's last levels hold 128-256 channels at 512 x
    # 512 per image, so large rollout batches are decoded in chunks (0 = the whole batch at once)
    vae_chunk: int = 8
    unet: SDUNetArch = field(default_factory=SDUNetArch)  # the ControlNet copies the UNet's encoder
    vae: VAEArch = field(default_factory=VAEArch)
    text: TextArch = field(default_factory=TextArch)
    swinir: SwinIRArch = field(default_factory=SwinIRArch)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downscale

    def validate(self, prefix: str = "policy") -> None:
        self.unet.validate(f"{prefix}.unet")
        self.vae.validate(f"{prefix}.vae")
        self.text.validate(f"{prefix}.text")
        self.swinir.validate(f"{prefix}.swinir")
        if self.unet.latent_channels != self.vae.latent_channels:
            raise ConfigError(f"{prefix}.unet.latent_channels ({self.unet.latent_channels}) must equal {prefix}.vae.latent_channels ({self.vae.latent_channels})")
        if self.unet.cross_attention_dim != self.text.width:
            raise ConfigError(f"{prefix}.unet.cross_attention_dim ({self.unet.cross_attention_dim}) must equal {prefix}.text.width ({self.text.width})")
        unet_factor = 2 ** (len(self.unet.block_out_channels) - 1)
        need = self.vae.downscale * unet_factor
        if self.resolution < need or self.resolution % need:
            raise ConfigError(f"{prefix}.resolution={self.resolution} must be a multiple of {need} (VAE x{self.vae.downscale}, UNet x{unet_factor})")
        if self.stage1 == "swinir":
            m = self.swinir.input_multiple
            if self.resolution % m:
                raise ConfigError(f"{prefix}.resolution={self.resolution} must be a multiple of {m} for the SwinIR stage 1")
        if not self.latent_scale > 0:
            raise ConfigError(f"{prefix}.latent_scale must be > 0, got {self.latent_scale}")
        if self.control_scale < 0:
            raise ConfigError(f"{prefix}.control_scale must be >= 0, got {self.control_scale}")
        if self.lora_rank < 0:
            raise ConfigError(f"{prefix}.lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_rank and not self.lora_targets:
            raise ConfigError(f"{prefix}.lora_targets is empty but lora_rank={self.lora_rank}")
        if self.lora_unet and not self.lora_rank:
            raise ConfigError(f"{prefix}.lora_unet needs lora_rank > 0")
        if self.vae_chunk < 0:
            raise ConfigError(f"{prefix}.vae_chunk must be >= 0, got {self.vae_chunk}")
        if self.lora_alpha < 0:
            raise ConfigError(f"{prefix}.lora_alpha must be >= 0, got {self.lora_alpha}")
        if not self.random_init:
            if not self.sd_checkpoint:
                raise ConfigError(
                    f"{prefix}.sd_checkpoint is empty: give the SD 2.1-base file (v2-1_512-ema-pruned.ckpt, "
                    f"registry name 'sd21-base') or a diffusers folder, or set {prefix}.random_init=true"
                )
            if self.stage1 == "swinir" and not self.swinir_checkpoint:
                raise ConfigError(
                    f"{prefix}.swinir_checkpoint is empty: give DiffBIR's face_swinir_v1.ckpt (registry name "
                    f"'diffbir-swinir-face'), or set {prefix}.stage1=none to condition on the resized LQ"
                )

    @classmethod
    def preset(cls, name: str, **overrides) -> "LatentPolicyConfig":
        """``"full"``: the reference sizes; ``"tiny"``: every part shrunk, 64 px faces (tests/CPU)."""
        if name == "full":
            cfg = cls()
        elif name == "tiny":
            cfg = cls(
                resolution=64,
                unet=SDUNetArch(
                    block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, False),
                    head_channels=16, cross_attention_dim=32, norm_num_groups=8,
                ),
                vae=VAEArch(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
                text=TextArch(width=32, layers=3, heads=2, context_length=77, vocab_size=100),
                swinir=SwinIRArch(img_size=8, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_feat=16),
            )
        else:
            raise ConfigError(f"unknown latent policy preset {name!r}; expected 'full' or 'tiny'")
        return dataclasses.replace(cfg, **overrides)


__all__ = ["LatentPolicyConfig", "SDUNetArch", "SwinIRArch", "TextArch", "VAEArch"]
