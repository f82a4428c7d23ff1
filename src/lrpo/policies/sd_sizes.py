"""Sizes from the files: what the tensors of a published SD 2.x, DiffBIR ControlNet or SwinIR file
say about the architecture (the layouts are described in :mod:`lrpo.policies.sd_loaders`).

Each function returns ``base`` with the fields the file's shapes determine replaced; what shapes
cannot say (head_channels, norm groups, text heads, ...) stays as in ``base``. A file too broken
to tell keeps ``base``'s value for that field: the strict load then lists what is wrong.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from torch import Tensor

from .latent_config import SDUNetArch, TextArch, VAEArch
from .sd_loaders import SD_TEXT_PREFIX, SD_UNET_PREFIX, SD_VAE_PREFIX
from .swinir import SwinIRArch

__all__ = ["swinir_arch_from_state_dict", "text_arch_from_ldm", "unet_arch_from_ldm", "vae_arch_from_ldm"]


def _children(sd: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted numeric child indices under ``prefix`` (``input_blocks.`` -> [0, 1, ..., 11])."""
    out = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return sorted(out)


def _shape(sd: Mapping[str, Tensor], key: str, dim: int) -> int | None:
    t = sd.get(key)
    return int(t.shape[dim]) if isinstance(t, Tensor) and t.ndim > dim else None


def unet_arch_from_ldm(sd: Mapping[str, Tensor], base: SDUNetArch, prefix: str = SD_UNET_PREFIX) -> SDUNetArch:
    """The LDM UNet (or DiffBIR ControlNet, prefix "") sizes held in ``sd``.

    levels = 1 + the number of ``input_blocks.{i}.0.op`` downsamplers; input_blocks holds 1 + levels *
    layers_per_block + (levels - 1) blocks; a level's width is its first ResBlock's output, and it
    has attention if that block has a ``.1`` SpatialTransformer. latent_channels is the input
    convolution's (for a ControlNet: latent + condition channels).
    """
    blocks = _children(sd, prefix + "input_blocks.")
    if not blocks:
        return base
    levels = 1 + sum(f"{prefix}input_blocks.{i}.0.op.weight" in sd for i in blocks)
    per_level, rest = divmod(len(blocks) - levels, levels)
    if per_level < 1 or rest:
        return base
    first = [1 + level * (per_level + 1) for level in range(levels)]
    widths = [_shape(sd, f"{prefix}input_blocks.{b}.0.out_layers.3.weight", 0) for b in first]
    if None in widths:
        return base
    attention = tuple(any(k.startswith(f"{prefix}input_blocks.{b}.1.") for k in sd) for b in first)
    # the first SpatialTransformer (the middle block always has one) tells the attention sizes
    attn_prefix = f"{prefix}input_blocks.{first[attention.index(True)]}.1." if any(attention) else f"{prefix}middle_block.1."
    fields = dict(
        block_out_channels=tuple(widths),
        layers_per_block=per_level,
        attention_levels=attention,
        latent_channels=_shape(sd, f"{prefix}input_blocks.0.0.weight", 1),
        cross_attention_dim=_shape(sd, f"{attn_prefix}transformer_blocks.0.attn2.to_k.weight", 1),
        transformer_depth=len(_children(sd, f"{attn_prefix}transformer_blocks.")) or None,
    )
    proj_in = sd.get(f"{attn_prefix}proj_in.weight")
    if isinstance(proj_in, Tensor):
        fields["use_linear_projection"] = proj_in.ndim == 2
    return dataclasses.replace(base, **{k: v for k, v in fields.items() if v is not None})


def vae_arch_from_ldm(sd: Mapping[str, Tensor], base: VAEArch, prefix: str = SD_VAE_PREFIX) -> VAEArch:
    """The LDM AutoencoderKL sizes: one width per ``encoder.down.{i}`` level (its ResBlocks'
    output), ResBlocks per level, latent channels (``post_quant_conv``'s, LDM's embed_dim)."""
    levels = _children(sd, prefix + "encoder.down.")
    widths = [_shape(sd, f"{prefix}encoder.down.{i}.block.0.conv2.weight", 0) for i in levels]
    if not levels or None in widths:
        return base
    fields = dict(
        block_out_channels=tuple(widths),
        layers_per_block=len(_children(sd, f"{prefix}encoder.down.0.block.")),
        latent_channels=_shape(sd, f"{prefix}post_quant_conv.weight", 0),
    )
    return dataclasses.replace(base, **{k: v for k, v in fields.items() if v is not None})


def text_arch_from_ldm(sd: Mapping[str, Tensor], base: TextArch, prefix: str = SD_TEXT_PREFIX) -> TextArch:
    """The OpenCLIP text tower's width, vocabulary, context length and layer count (all layers in
    the file, of which SD reads ``layers - skip_last_layers``); the head count is not in the shapes."""
    fields = dict(
        vocab_size=_shape(sd, f"{prefix}token_embedding.weight", 0),
        width=_shape(sd, f"{prefix}token_embedding.weight", 1),
        context_length=_shape(sd, f"{prefix}positional_embedding", 0),
        layers=len(_children(sd, f"{prefix}transformer.resblocks.")) or None,
    )
    return dataclasses.replace(base, **{k: v for k, v in fields.items() if v is not None})


def swinir_arch_from_state_dict(sd: Mapping[str, Tensor], base: SwinIRArch) -> SwinIRArch:
    """SwinIR sizes from its tensors.

    embed_dim: the first convolution's output (after PixelUnshuffle(sf): 3 sf^2 inputs); depths:
    blocks per residual group; heads and window: the relative position bias table [(2 ws - 1)^2,
    heads]; mlp_ratio: fc1 width / embed_dim; num_feat: the reconstruction tail's width; img_size:
    side of the feature map the shifted blocks' attention masks [(img/ws)^2, ws^2, ws^2] were made for.
    """
    unshuffle = "conv_first.1.weight" in sd
    first = sd.get("conv_first.1.weight" if unshuffle else "conv_first.weight")
    groups = _children(sd, "layers.")
    if not isinstance(first, Tensor) or first.ndim != 4 or not groups:
        return base
    embed = int(first.shape[0])
    ups = sum(f"conv_up{k}.weight" in sd for k in (1, 2, 3))
    sf = math.isqrt(int(first.shape[1]) // 3) if unshuffle else 2**ups
    depths, heads, windows = [], [], set()
    for i in groups:
        depths.append(len(_children(sd, f"layers.{i}.residual_group.blocks.")))
        table = sd.get(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")
        if not isinstance(table, Tensor) or table.ndim != 2:
            return base
        heads.append(int(table.shape[1]))
        windows.add((math.isqrt(int(table.shape[0])) + 1) // 2)
    if len(windows) != 1:
        return base
    window = windows.pop()
    masks = [v for k, v in sd.items() if k.endswith(".attn_mask") and isinstance(v, Tensor) and v.ndim == 3]
    if masks:
        img_size = window * math.isqrt(int(masks[0].shape[0]))
    elif any(d > 1 for d in depths):
        img_size = window  # shifted blocks without a mask: one window covers the map (SwinBlock's rule)
    else:
        img_size = base.img_size  # no shifted block: the map size leaves no trace
    hidden = _shape(sd, f"layers.{groups[0]}.residual_group.blocks.0.mlp.fc1.weight", 0)
    fields = dict(
        img_size=img_size, embed_dim=embed, depths=tuple(depths), num_heads=tuple(heads), window_size=window,
        sf=sf, unshuffle=unshuffle, mlp_ratio=hidden / embed if hidden else None,
        num_feat=_shape(sd, "conv_before_upsample.0.weight", 0),
    )
    return dataclasses.replace(base, **{k: v for k, v in fields.items() if v is not None})
