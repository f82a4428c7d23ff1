"""DiffBIR's stage-1 SwinIR (Liang et al. 2021), with the parameter names of its published files.

DiffBIR restores faces in two stages; stage 1 is a SwinIR regression model (``face_swinir_v1.ckpt``,
configured by ``configs/inference/swinir.yaml`` of XPixelGroup/DiffBIR) whose output conditions the
diffusion model. The face variant works on 512 x 512 inputs:

    x in [0, 1] -> x - mean (0.4488, 0.4371, 0.4040)
    conv_first:  PixelUnshuffle(8) -> 3*64 channels at 64 x 64 -> Conv3x3 -> embed_dim (180)
    body:        8 residual Swin groups ("RSTB") of 6 blocks, 6 heads, window 8, MLP ratio 2;
                 odd blocks shift their windows by 4 pixels
    tail:        LayerNorm, Conv3x3 (+ the conv_first features), Conv3x3 -> 64 ch, LeakyReLU(0.01),
                 three rounds of (nearest x2, Conv3x3, LeakyReLU(0.2)), conv_hr, LeakyReLU(0.2), conv_last
    + mean       -> [B, 3, 512, 512], nominally [0, 1] but not clamped (DiffBIR does not clamp it)

State-dict names (all persistent tensors of DiffBIR's module, so its files load strictly):
    conv_first.1.{weight,bias}, patch_embed.norm.{weight,bias},
    layers.{i}.residual_group.blocks.{j}.{norm1, attn.relative_position_bias_table,
        attn.relative_position_index, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
        and attn_mask for shifted blocks (j odd), layers.{i}.conv,
    norm, conv_after_body, conv_before_upsample.0, conv_up1, conv_up2, conv_up3, conv_hr, conv_last.
Only what the face model uses is built: patch size 1, "nearest+conv" upsampling, "1conv" residual
connections, no absolute position embedding, dropout and drop-path off (inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted before the network
SHIFT_MASK_VALUE = -100.0  # attention logit between tokens of different shifted regions


@dataclass
class SwinIRArch:
    """Hyper-parameters of the stage-1 SwinIR; defaults are DiffBIR's face model."""

    img_size: int = 64  # feature-map side the attention masks are precomputed for (512 / sf)
    embed_dim: int = 180
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6, 6, 6)  # Swin blocks per residual group
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    sf: int = 8  # output / feature-map scale: the pixel-unshuffle and the upsampling factor
    unshuffle: bool = True  # input is pixel-unshuffled by sf (output size = input size)
    num_feat: int = 64  # channels of the reconstruction tail (hard-coded 64 in DiffBIR)

    def validate(self, prefix: str = "swinir") -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ConfigError(f"{prefix}.depths and {prefix}.num_heads must be non-empty and of equal length, got {self.depths}, {self.num_heads}")
        if any(self.embed_dim % h for h in self.num_heads):
            raise ConfigError(f"{prefix}.embed_dim={self.embed_dim} must be divisible by every entry of num_heads {self.num_heads}")
        if self.sf not in (2, 4, 8):
            raise ConfigError(f"{prefix}.sf must be 2, 4 or 8 (nearest+conv upsampling), got {self.sf}")
        if self.window_size < 1 or self.img_size < 1:
            raise ConfigError(f"{prefix}.window_size and img_size must be >= 1")

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this (window partition of the feature map)."""
        return self.window_size * (self.sf if self.unshuffle else 1)


def window_partition(x: Tensor, ws: int) -> Tensor:
    """[B, H, W, C] -> [B * (H/ws) * (W/ws), ws*ws, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: [B * nW, ws*ws, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    """[ws*ws, ws*ws] long: index into the (2ws-1)^2 bias table for each (query, key) pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [N, N, 2] in [0, 2ws-2]
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """[nW, ws*ws, ws*ws] additive mask: 0 within a region, -100 across regions of a rolled map."""
    region = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = label
            label += 1
    windows = window_partition(region, ws).squeeze(-1)  # [nW, N]
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: [B*nW, N, C]; mask: [nW, N, N] additive or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        bias = bias.to(q.dtype)  # [heads, N, N]
        if mask is None:
            attn_bias = bias.expand(bw, -1, -1, -1)
        else:
            nw = mask.shape[0]
            attn_bias = (bias[None, None] + mask.to(q.dtype)[None, :, None]).expand(bw // nw, -1, -1, -1, -1)
            attn_bias = attn_bias.reshape(bw, self.heads, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # scale = head_dim ** -0.5
        return self.proj(y.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention block on tokens [B, H*W, C] of a map of ``resolution``."""

    def __init__(self, dim: int, resolution: int, heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= ws:  # one window covers the map: no partition, no shift (as SwinIR)
            ws, shift = resolution, 0
        self.ws, self.shift, self.resolution = ws, shift, resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # persistent (part of DiffBIR's files) only for shifted blocks, as there
        self.register_buffer("attn_mask", shifted_window_mask(resolution, resolution, ws, shift) if shift else None)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = None
        if self.shift:
            mask = self.attn_mask if (h, w) == (self.resolution, self.resolution) else shifted_window_mask(h, w, self.ws, self.shift).to(x.device)
        y = window_merge(self.attn(window_partition(y, self.ws), mask), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BlockGroup(nn.Module):
    def __init__(self, blocks: list[SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class ResidualSwinGroup(nn.Module):
    """RSTB: Swin blocks, a 3x3 conv on the re-formed map, plus the group's input."""

    def __init__(self, dim: int, resolution: int, depth: int, heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        blocks = [SwinBlock(dim, resolution, heads, ws, 0 if j % 2 == 0 else ws // 2, mlp_ratio) for j in range(depth)]
        self.residual_group = BlockGroup(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *size))
        return y.flatten(2).transpose(1, 2) + x


class PatchNorm(nn.Module):
    """SwinIR's ``patch_embed`` with patch size 1: flatten to tokens and LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class SwinIR(nn.Module):
    """Stage-1 restorer: images [B, 3, H, W] in [0, 1] -> [B, 3, H*s, W*s] (s = 1 with unshuffle).

    H and W must be multiples of ``arch.input_multiple`` (64 for the face model); DiffBIR feeds
    512 x 512 faces.
    """

    def __init__(self, arch: SwinIRArch | None = None):
        super().__init__()
        arch = arch or SwinIRArch()
        arch.validate()
        self.arch = arch
        dim, nf = arch.embed_dim, arch.num_feat
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        if arch.unshuffle:
            self.conv_first = nn.Sequential(nn.PixelUnshuffle(arch.sf), nn.Conv2d(3 * arch.sf**2, dim, 3, 1, 1))
        else:
            self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.patch_embed = PatchNorm(dim)
        self.layers = nn.ModuleList(
            ResidualSwinGroup(dim, arch.img_size, d, h, arch.window_size, arch.mlp_ratio) for d, h in zip(arch.depths, arch.num_heads)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU())
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        if arch.sf >= 4:
            self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        if arch.sf == 8:
            self.conv_up3 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def _upsamplers(self) -> list[nn.Conv2d]:
        return [self.conv_up1] + [getattr(self, n) for n in ("conv_up2", "conv_up3") if hasattr(self, n)]

    def forward(self, x: Tensor) -> Tensor:
        m = self.arch.input_multiple
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"SwinIR takes [B, 3, H, W] with H, W multiples of {m}, got {tuple(x.shape)}")
        x = self.conv_first(x - self.mean.to(x.dtype))
        size = (x.shape[-2], x.shape[-1])
        t = self.patch_embed(x)
        for group in self.layers:
            t = group(t, size)
        t = self.norm(t)
        b, _, c = t.shape
        x = self.conv_after_body(t.transpose(1, 2).reshape(b, c, *size)) + x
        x = self.conv_before_upsample(x)
        for conv in self._upsamplers():
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        return x + self.mean.to(x.dtype)


__all__ = ["RGB_MEAN", "SwinIR", "SwinIRArch", "relative_position_index", "shifted_window_mask", "window_merge", "window_partition"]
