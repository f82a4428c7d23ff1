"""MUSIQ (Ke et al., ICCV 2021) as pyiqa's ``musiq_arch.py`` defines it; see :mod:`lrpo.eval.iqa`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...model_files import CheckpointFormatError
from .shared import Mlp, count_children, load_frozen, need_key, pyiqa_file, read_pyiqa_state_dict, tf_same_pad


MUSIQ_KONIQ_WEIGHTS = pyiqa_file(
    "musiq-koniq", "musiq_koniq_ckpt-e95806b9.pth",
    "MUSIQ trained on KonIQ-10k (pyiqa metric 'musiq'; converted by pyiqa from google-research/musiq)", "e95806b9",
    (10.0, 500.0),  # about 27 M parameters
)


# ----------------------------------------------------------------------------------------------
# MUSIQ (Ke et al., ICCV 2021)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MUSIQConfig:
    """pyiqa's MUSIQ (``musiq_arch.py``), defaults of the KonIQ file.

    patch_size:       side of the image patches that become tokens (32); the ResNet root reduces
                      each patch by 4, so embedding.in_features = 4 * root_width * (patch / 4)^2.
    spatial_grid:     G of the hash-based G x G positional embedding (10).
    longer_side_lengths: the resized scales (224, 384); the native resolution is the last scale.
    num_heads:        not visible in the file (6).
    """

    patch_size: int = 32
    root_width: int = 64
    hidden_size: int = 384
    mlp_dim: int = 1152
    num_heads: int = 6
    num_layers: int = 14
    spatial_grid: int = 10
    longer_side_lengths: tuple[int, ...] = (224, 384)

    @property
    def num_scales(self) -> int:
        return len(self.longer_side_lengths) + 1


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution with TF 'SAME' padding (BiT's ResNet root, as MUSIQ):
    w' = (w - mean(w)) / (std(w) + 1e-5) over each filter, std with Bessel's correction."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(tf_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class _MUSIQBottleneck(nn.Module):
    """Pre-activation-free BiT bottleneck, GroupNorm(32, eps 1e-4), width = input channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.gn1 = StdConv2d(cin, cin, 1), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2, self.gn2 = StdConv2d(cin, cin, 3), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3, self.gn3 = StdConv2d(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj, self.gn_proj = StdConv2d(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + identity)


class _MUSIQAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MUSIQ width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, N, D]; mask [B, N] bool (False: padding). Logits of a pair with a padded token are
        set to -1e3 (not -inf: a padded query row stays finite), as the official model does."""
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        attn = logits.masked_fill(~pair, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class _MUSIQBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _MUSIQAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _Holder(nn.Module):
    """A module holding one named parameter (pyiqa's AddHashSpatialPositionEmbs / AddScaleEmbs)."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.zeros(shape)))


class _MUSIQEncoder(nn.Module):
    def __init__(self, cfg: MUSIQConfig):
        super().__init__()
        d = cfg.hidden_size
        self.posembed_input = _Holder("position_emb", (1, cfg.spatial_grid**2, d))
        self.scaleembed_input = _Holder("scale_emb", (cfg.num_scales, d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": _MUSIQBlock(d, cfg.mlp_dim, cfg.num_heads) for i in range(cfg.num_layers)}
        )

    def forward(self, x: Tensor, spatial: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
        x = x + self.posembed_input.position_emb[0][spatial]
        x = x + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


def _hashed_index(grid: int, count: int) -> Tensor:
    """Which of ``grid`` embedding rows each of ``count`` patch rows uses: torch's 'nearest'
    resampling of 0..grid-1 to ``count`` values (the official hash-based embedding)."""
    ramp = torch.arange(grid, dtype=torch.float32).view(1, 1, grid)
    return F.interpolate(ramp, size=count, mode="nearest").view(count).long()


def _scale_tokens(image: Tensor, patch: int, grid: int, scale_id: int, max_len: int | None):
    """One scale's tokens: image [B, 3, h, w] -> (patches [B, L, 3, p, p], spatial [B, L],
    scale [B, L], mask [B, L]); zero-padded to 'SAME' size; cut or zero-padded to max_len
    (padding tokens: zero patch, position 0, scale 0, mask False)."""
    b, c, h, w = image.shape
    nh, nw = math.ceil(h / patch), math.ceil(w / patch)
    x = tf_same_pad(image, patch, patch)
    patches = x.view(b, c, nh, patch, nw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, nh * nw, c, patch, patch)
    spatial = (_hashed_index(grid, nh)[:, None] * grid + _hashed_index(grid, nw)[None, :]).reshape(1, -1)
    spatial = spatial.to(image.device).expand(b, -1)
    scale = torch.full_like(spatial, scale_id)
    mask = torch.ones_like(spatial)
    if max_len is not None:
        pad = max(max_len - nh * nw, 0)
        patches = F.pad(patches, (0, 0, 0, 0, 0, 0, 0, pad))[:, :max_len]
        spatial, scale, mask = (F.pad(t, (0, pad))[:, :max_len] for t in (spatial, scale, mask))
    return patches, spatial, scale, mask.bool()


def musiq_multiscale_tokens(x: Tensor, cfg: MUSIQConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MUSIQ's multi-scale input: x [B, 3, H, W] (already in [-1, 1]) -> (patches [B, L, 3, p, p],
    spatial position [B, L], scale id [B, L], mask [B, L]).

    Scale k < S (longer sides sorted): bicubic resize (no antialiasing) to longer side l_k with
    round(h * l_k / max(h, w)) x round(w * ...), patches padded / cut to ceil(l_k / p)^2 tokens.
    Scale S: the native resolution, every patch (max_seq_len_from_original_res = -1).
    """
    h, w = x.shape[-2:]
    parts = []
    for scale_id, longer in enumerate(sorted(cfg.longer_side_lengths)):
        ratio = longer / max(h, w)
        resized = F.interpolate(x, (round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False)
        max_len = math.ceil(longer / cfg.patch_size) ** 2
        parts.append(_scale_tokens(resized, cfg.patch_size, cfg.spatial_grid, scale_id, max_len))
    parts.append(_scale_tokens(x, cfg.patch_size, cfg.spatial_grid, len(cfg.longer_side_lengths), None))
    return tuple(torch.cat(p, dim=1) for p in zip(*parts))  # type: ignore[return-value]


class MUSIQ(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> MOS [B] (KonIQ scale ~0..100; higher is better)."""

    def __init__(self, cfg: MUSIQConfig):
        super().__init__()
        self.config = cfg
        w = cfg.root_width
        self.conv_root = StdConv2d(3, w, 7, 2)
        self.gn_root = nn.GroupNorm(32, w, eps=1e-6)
        self.block1 = _MUSIQBottleneck(w, 4 * w)
        self.embedding = nn.Linear(4 * w * (cfg.patch_size // 4) ** 2, cfg.hidden_size)
        self.transformer_encoder = _MUSIQEncoder(cfg)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """patches [B, L, 3, p, p] -> tokens [B, L, hidden]; the feature map is flattened (h, w, c)
        as the TensorFlow original does."""
        b, n = patches.shape[:2]
        x = F.relu(self.gn_root(self.conv_root(patches.flatten(0, 1))))
        x = F.max_pool2d(tf_same_pad(x, 3, 2), 3, 2)
        x = self.block1(x)
        return self.embedding(x.permute(0, 2, 3, 1).reshape(b, n, -1))

    def forward(self, images: Tensor) -> Tensor:
        x = (images.float() - 0.5) * 2
        patches, spatial, scale, mask = musiq_multiscale_tokens(x, self.config)
        tokens = self.transformer_encoder(self.embed_patches(patches), spatial, scale, mask)
        return self.head(tokens[:, 0]).squeeze(-1)


def musiq_config_from_state_dict(sd: Mapping[str, Tensor], base: MUSIQConfig = MUSIQConfig(), source: str = "MUSIQ file") -> MUSIQConfig:
    """Sizes from shapes; heads and the resized scales from ``base``."""
    if "head.0.weight" in sd:
        raise CheckpointFormatError(f"{source}: a distribution head (MUSIQ-AVA); only the MOS files (KonIQ, SPAQ, PaQ-2-PiQ) are supported")
    root = need_key(sd, "conv_root.weight", source, "MUSIQ").shape[0]
    emb = need_key(sd, "embedding.weight", source, "MUSIQ")
    token_side = math.isqrt(emb.shape[1] // (4 * root))
    grid = math.isqrt(need_key(sd, "transformer_encoder.posembed_input.position_emb", source, "MUSIQ").shape[1])
    scales = need_key(sd, "transformer_encoder.scaleembed_input.scale_emb", source, "MUSIQ").shape[0]
    cfg = replace(
        base, patch_size=4 * token_side, root_width=root, hidden_size=emb.shape[0], spatial_grid=grid,
        mlp_dim=need_key(sd, "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight", source, "MUSIQ").shape[0],
        num_layers=count_children(sd, "transformer_encoder.transformer.encoderblock_"),
    )
    if scales != cfg.num_scales:
        raise CheckpointFormatError(
            f"{source}: {scales} scale embeddings, but {len(cfg.longer_side_lengths)} resized scales + the native one were asked for"
        )
    return cfg


def load_musiq(path: str | os.PathLike, base: MUSIQConfig = MUSIQConfig(), *, trust_pickle: bool = False) -> MUSIQ:
    """pyiqa's MUSIQ file (raw state dict, loaded strictly) -> frozen float32 MUSIQ."""
    sd = read_pyiqa_state_dict(path, trust_pickle=trust_pickle)
    return load_frozen(MUSIQ(musiq_config_from_state_dict(sd, base, str(path))), sd, str(path))
