"""MANIQA (Yang et al., CVPRW 2022): ViT-B/8 features, transposed attention, Swin stages, as pyiqa
defines it (``maniqa_arch.py``, ``maniqa_swin.py``); see :mod:`lrpo.eval.iqa`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...model_files import CheckpointFormatError
from .shared import Mlp, count_children, load_frozen, need_key, normalise, pyiqa_file, read_pyiqa_state_dict


MANIQA_KONIQ_WEIGHTS = pyiqa_file(
    "maniqa-koniq", "ckpt_koniq10k.pt",
    "MANIQA trained on KonIQ-10k, ViT-B/8 backbone included (pyiqa metric 'maniqa'; IIGROUP/MANIQA)", None,
    (50.0, 1500.0),  # about 135 M parameters
)


# ----------------------------------------------------------------------------------------------
# MANIQA (Yang et al., CVPRW 2022): ViT-B/8 features, transposed attention, Swin stages
# ----------------------------------------------------------------------------------------------
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class MANIQAConfig:
    """pyiqa's MANIQA (``maniqa_arch.py``, ``maniqa_swin.py``) for ``maniqa`` (KonIQ).

    Not visible in the file: vit_heads (12, timm vit_base_patch8_224), vit_taps (blocks whose
    outputs are concatenated: 6, 7, 8, 9), swin_scale (0.8: the KonIQ option; pyiqa's default
    0.13 is for the PIPAL file) and crops (20 test crops).
    """

    patch_size: int = 8
    crop_size: int = 224
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    vit_mlp: int = 3072
    vit_classes: int = 1000
    vit_taps: tuple[int, ...] = (6, 7, 8, 9)
    num_tab: int = 2
    swin_depths: tuple[int, ...] = (2, 2)
    swin_heads: tuple[int, ...] = (4, 4)
    swin_window: int = 4
    swin_mlp: int = 768
    swin_scale: float = 0.8
    crops: int = 20

    @property
    def grid(self) -> int:
        return self.crop_size // self.patch_size


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm's VisionTransformer (class token, learned positions, pre-norm blocks) with its key
    names. Only the block outputs are used; ``norm`` and ``head`` are in the file and kept."""

    def __init__(self, patch: int, image: int, dim: int, depth: int, heads: int, mlp: int, classes: int):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList([_ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def block_outputs(self, x: Tensor, taps: Sequence[int]) -> list[Tensor]:
        """x [B, 3, S, S] normalised -> outputs [B, 1 + N, D] of the blocks in ``taps``."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        outputs = []
        for i, block in enumerate(self.blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                outputs.append(x)
        return outputs


class _TABlock(nn.Module):
    """MANIQA's transposed attention on x [B, C, N]: the N spatial positions are the features, so
    attention weights are C x C. The result is reshaped (not transposed) from [B, N, C] back to
    [B, C, N], mixing channels and positions exactly as the published model does."""

    def __init__(self, n: int):
        super().__init__()
        self.c_q, self.c_k, self.c_v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        attn = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * n**-0.5).softmax(dim=-1)
        return (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n) + x


def _relative_position_index(w: int) -> Tensor:
    """[w^2, w^2] index into the (2w - 1)^2 relative-position bias table (Swin)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # [2, w^2]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # [w^2, w^2, 2] in 0..2w-2
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def _windows(x: Tensor, w: int) -> Tensor:
    """[B, H, W, C] -> [B * (H/w) * (W/w), w * w, C], windows in row-major order."""
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _unwindows(win: Tensor, w: int, h: int, wd: int) -> Tensor:
    c = win.shape[-1]
    b = win.shape[0] // ((h // w) * (wd // w))
    return win.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)


def _shift_mask(h: int, wd: int, w: int, shift: int) -> Tensor:
    """[nW, w^2, w^2]: 0 within a region of the cyclically shifted map, -100 across regions."""
    regions = torch.zeros(1, h, wd, 1)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for k, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        regions[:, rows, cols, :] = k
    ids = _windows(regions, w).squeeze(-1)  # [nW, w^2]
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B * nW, w^2, C]; mask [nW, w^2, w^2] or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c))


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, grid: int, heads: int, window: int, shift: int, mlp: int):
        super().__init__()
        if grid <= window:  # a window covering the whole map: no partition, no shift (as Swin)
            window, shift = grid, 0
        self.grid, self.window, self.shift = grid, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp)
        # a buffer of the file only for shifted blocks (None is not saved)
        self.register_buffer("attn_mask", _shift_mask(grid, grid, window, shift) if shift > 0 else None)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, g * g, C]."""
        b, n, c = x.shape
        g, w, s = self.grid, self.window, self.shift
        h = self.norm1(x).view(b, g, g, c)
        if s:
            h = torch.roll(h, (-s, -s), dims=(1, 2))
        h = _unwindows(self.attn(_windows(h, w), self.attn_mask), w, g, g)
        if s:
            h = torch.roll(h, (s, s), dims=(1, 2))
        x = x + h.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class _SwinStage(nn.Module):
    """pyiqa's maniqa_swin BasicLayer: Swin blocks (alternately shifted), then ReLU(3x3 conv)."""

    def __init__(self, dim: int, grid: int, depth: int, heads: int, window: int, mlp: int):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            [_SwinBlock(dim, grid, heads, window, 0 if i % 2 == 0 else window // 2, mlp) for i in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        b, n, c = x.shape
        x = F.relu(self.conv(x.transpose(1, 2).reshape(b, c, self.grid, self.grid)))
        return x.flatten(2).transpose(1, 2)


class _MANIQASwin(nn.Module):
    """Stages with a scaled residual, x <- scale * stage(x) + x; [B, C, g, g] in and out.
    ``downsample`` is in the published file but never used by the forward pass."""

    def __init__(self, dim: int, grid: int, depths: Sequence[int], heads: Sequence[int], window: int, mlp: int, scale: float):
        super().__init__()
        self.scale = scale
        self.downsample = nn.Conv2d(dim, dim, 3, 2, 1)
        self.layers = nn.ModuleList([_SwinStage(dim, grid, d, h, window, mlp) for d, h in zip(depths, heads)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, g, _ = x.shape
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, g, g)


def _uniform_crops(x: Tensor, size: int, count: int) -> Tensor:
    """pyiqa's uniform_crop: x [B, C, H, W] -> [B * count, C, size, size], sample-major.

    When min(H, W) <= size the image is first upscaled (bilinear, scale factor (size + 1) / min).
    Crop tops/lefts are k * ((H - size) // floor(sqrt(count))) for k < ceil(sqrt(count)), taken
    row-major, the first ``count`` kept.
    """
    b, c, h, w = x.shape
    if min(h, w) <= size:
        x = F.interpolate(x, scale_factor=(size + 1) / min(h, w), mode="bilinear")
        h, w = x.shape[-2:]
    per_side, steps = math.ceil(math.sqrt(count)), int(math.sqrt(count))
    dh, dw = (h - size) // steps, (w - size) // steps
    crops = [x[..., i * dh : i * dh + size, j * dw : j * dw + size] for i in range(per_side) for j in range(per_side)]
    return torch.stack(crops[:count], dim=1).reshape(b * count, c, size, size)


class MANIQA(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> quality [B] (~0..1, higher is better).

      1. x = (images - 0.5) / 0.5; K crops of S x S (uniform grid); per crop, the ViT tokens of
         blocks 6..9 without the class token, concatenated: [K, N, 4D], N = (S / patch)^2.
      2. two transposed-attention blocks, 1x1 conv 4D -> D, Swin stage; again with D -> D/2.
      3. per token t of every crop: score s_t = fc_score (ReLU), weight w_t = fc_weight (sigmoid);
         quality = sum_t w_t s_t / (sum_t w_t + 1e-8) over all K * N tokens of the image.
    """

    def __init__(self, cfg: MANIQAConfig):
        super().__init__()
        self.config = cfg
        d, g, n = cfg.vit_dim, cfg.grid, cfg.grid**2
        taps = len(cfg.vit_taps)
        self.vit = TimmViT(cfg.patch_size, cfg.crop_size, d, cfg.vit_depth, cfg.vit_heads, cfg.vit_mlp, cfg.vit_classes)
        self.tablock1 = nn.ModuleList([_TABlock(n) for _ in range(cfg.num_tab)])
        self.conv1 = nn.Conv2d(d * taps, d, 1)
        self.swintransformer1 = _MANIQASwin(d, g, cfg.swin_depths, cfg.swin_heads, cfg.swin_window, cfg.swin_mlp, cfg.swin_scale)
        self.tablock2 = nn.ModuleList([_TABlock(n) for _ in range(cfg.num_tab)])
        self.conv2 = nn.Conv2d(d, d // 2, 1)
        self.swintransformer2 = _MANIQASwin(d // 2, g, cfg.swin_depths, cfg.swin_heads, cfg.swin_window, cfg.swin_mlp, cfg.swin_scale)
        self.fc_score = nn.Sequential(nn.Linear(d // 2, d // 2), nn.ReLU(), nn.Dropout(0.0), nn.Linear(d // 2, 1), nn.ReLU())
        self.fc_weight = nn.Sequential(nn.Linear(d // 2, d // 2), nn.ReLU(), nn.Dropout(0.0), nn.Linear(d // 2, 1), nn.Sigmoid())

    def crop_tokens(self, crops: Tensor) -> Tensor:
        """crops [K, 3, S, S] normalised -> per-token features [K, N, D/2]."""
        cfg = self.config
        g = cfg.grid
        x = torch.cat([t[:, 1:] for t in self.vit.block_outputs(crops, cfg.vit_taps)], dim=2)  # [K, N, 4D]
        x = x.transpose(1, 2)  # [K, 4D, N]
        for block in self.tablock1:
            x = block(x)
        x = self.swintransformer1(self.conv1(x.reshape(x.shape[0], -1, g, g)))
        x = x.flatten(2)
        for block in self.tablock2:
            x = block(x)
        x = self.swintransformer2(self.conv2(x.reshape(x.shape[0], -1, g, g)))
        return x.flatten(2).transpose(1, 2)

    def forward(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        x = normalise(images.float(), INCEPTION_MEAN, INCEPTION_STD)
        tokens = self.crop_tokens(_uniform_crops(x, self.config.crop_size, self.config.crops))
        score = self.fc_score(tokens).reshape(b, -1)
        weight = self.fc_weight(tokens).reshape(b, -1)
        return (weight * score).sum(dim=-1) / (weight.sum(dim=-1) + 1e-8)


def maniqa_config_from_state_dict(sd: Mapping[str, Tensor], base: MANIQAConfig = MANIQAConfig(), source: str = "MANIQA file") -> MANIQAConfig:
    def need(key: str) -> Tensor:
        return need_key(sd, key, source, "MANIQA")

    patch = need("vit.patch_embed.proj.weight")
    grid = math.isqrt(need("vit.pos_embed").shape[1] - 1)
    depths = tuple(count_children(sd, f"swintransformer1.layers.{i}.blocks.") for i in range(count_children(sd, "swintransformer1.layers.")))
    heads = tuple(need(f"swintransformer1.layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(len(depths)))
    table = need("swintransformer1.layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    taps = need("conv1.weight").shape[1] // patch.shape[0]
    if taps != len(base.vit_taps):
        raise CheckpointFormatError(f"{source}: conv1 takes {taps} ViT block outputs, the config taps {len(base.vit_taps)}")
    return replace(
        base,
        patch_size=patch.shape[-1],
        crop_size=grid * patch.shape[-1],
        vit_dim=patch.shape[0],
        vit_depth=count_children(sd, "vit.blocks."),
        vit_mlp=need("vit.blocks.0.mlp.fc1.weight").shape[0],
        vit_classes=need("vit.head.weight").shape[0],
        num_tab=count_children(sd, "tablock1."),
        swin_depths=depths,
        swin_heads=heads,
        swin_window=(math.isqrt(table) + 1) // 2,
        swin_mlp=need("swintransformer1.layers.0.blocks.0.mlp.fc1.weight").shape[0],
    )


def load_maniqa(path: str | os.PathLike, base: MANIQAConfig = MANIQAConfig(), *, trust_pickle: bool = False) -> MANIQA:
    """pyiqa's MANIQA file (raw state dict, loaded strictly, computed Swin buffers included) -> frozen MANIQA."""
    sd = read_pyiqa_state_dict(path, trust_pickle=trust_pickle)
    return load_frozen(MANIQA(maniqa_config_from_state_dict(sd, base, str(path))), sd, str(path))
