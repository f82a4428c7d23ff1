"""TOPIQ-NR (Chen et al., TIP 2024): pyiqa's CFANet with ``use_ref=False`` on a ResNet-50; see :mod:`lrpo.eval.iqa`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...model_files import CheckpointFormatError
from .shared import count_children, load_frozen, need_key, normalise, pyiqa_file, read_pyiqa_state_dict


TOPIQ_NR_KONIQ_WEIGHTS = pyiqa_file(
    "topiq-nr-koniq", "cfanet_nr_koniq_res50-9a73138b.pth",
    "TOPIQ-NR (CFANet) trained on KonIQ-10k, ResNet-50 backbone included (pyiqa metric 'topiq_nr')", "9a73138b",
    (10.0, 800.0),  # a ResNet-50 and its heads
)


# ----------------------------------------------------------------------------------------------
# ResNet-50 features (timm ``resnet50`` with ``features_only=True``), TOPIQ's backbone
# ----------------------------------------------------------------------------------------------
class _Bottleneck(nn.Module):
    """torchvision/timm ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    def __init__(self, cin: int, width: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetFeatures(nn.Module):
    """forward(x [B, 3, H, W] normalised) -> 5 maps: stem (stride 2, after ReLU, before the max
    pool), layer1..layer4 (strides 4..32); channels (64, 256, 512, 1024, 2048) for ResNet-50."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), stem: int = 64,
                 widths: Sequence[int] = (64, 128, 256, 512), expansion: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        for i, (blocks, width) in enumerate(zip(layers, widths)):
            stage = []
            for j in range(blocks):
                stage.append(_Bottleneck(cin, width, width * expansion, 2 if i > 0 and j == 0 else 1))
                cin = width * expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.channels = [stem] + [w * expansion for w in widths]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [F.relu(self.bn1(self.conv1(x)))]
        x = F.max_pool2d(feats[0], 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


# ----------------------------------------------------------------------------------------------
# TOPIQ-NR (Chen et al., TIP 2024): pyiqa's CFANet with use_ref=False
# ----------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TOPIQConfig:
    """pyiqa's CFANet (``topiq_arch.py``) for ``topiq_nr``: ResNet-50 features, inter_dim 256,
    4 heads (not visible in the file), one attention layer per block, GELU."""

    backbone_layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 64
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)
    expansion: int = 4
    inter_dim: int = 256
    num_heads: int = 4
    feedforward_dim: int = 1024  # min(4 * inter_dim, 2048)
    gate_width: int = 64  # GatedConv's weight branch
    pos_grid: int = 32  # h_emb / w_emb are [1, inter_dim / 2, 32, 1] / [1, inter_dim / 2, 1, 32]


class _GatedConv(nn.Module):
    """Gated local pooling: 1x1 conv to 2C, split; GELU(first half) * sigmoid-weight(second half)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.splitconv = nn.Conv2d(dim, dim * 2, 1)
        self.weight_blk = nn.Sequential(
            nn.Conv2d(dim, width, 1), nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 1, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.splitconv(x).chunk(2, dim=1)
        return F.gelu(x1) * self.weight_blk(x2)


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention layer; tokens [L, B, D] (sequence first, as nn.MultiheadAttention's default)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src: Tensor) -> Tensor:
        h = self.norm1(src)
        src = src + self.self_attn(h, h, h, need_weights=False)[0]
        return src + self.linear2(F.gelu(self.linear1(self.norm2(src))))


class _DecoderLayer(nn.Module):
    """Pre-norm cross-attention layer (query tgt, keys/values memory). ``self_attn`` is in the
    published file but pyiqa's forward never calls it; it is loaded and left unused."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.multihead_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt: Tensor, memory: Tensor) -> Tensor:
        memory = self.norm2(memory)
        tgt = tgt + self.multihead_attn(self.norm1(tgt), memory, memory, need_weights=False)[0]
        return tgt + self.linear2(F.gelu(self.linear1(self.norm3(tgt))))


class _Stack(nn.Module):
    """pyiqa's TransformerEncoder / TransformerDecoder: ``layers`` applied in turn."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, *memory: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, *memory)
        return x


class TOPIQNR(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1], native resolution) -> quality [B] (~0..1, higher is better).

    Notation: F_0..F_4 the backbone maps (strides 2..32), (h4, w4) the size of F_4.
      1. T_i = dim_reduce_i(gate_i(F_i)), average-pooled to (h4, w4) when larger, plus the learned
         2-D position embedding resized (bicubic) to its grid; T_i = self_attn_i(T_i).
      2. q = T_4; q = cross_attn_k(q, T_{3-k}) for k = 0..3 (coarse to fine).
      3. score = MLP(mean over tokens of attn_pool(q)).
    """

    def __init__(self, cfg: TOPIQConfig):
        super().__init__()
        self.config = cfg
        d, heads, ff = cfg.inter_dim, cfg.num_heads, cfg.feedforward_dim
        self.semantic_model = ResNetFeatures(cfg.backbone_layers, cfg.stem_width, cfg.backbone_widths, cfg.expansion)
        dims = self.semantic_model.channels
        self.weight_pool = nn.ModuleList([_GatedConv(c, cfg.gate_width) for c in dims])
        self.dim_reduce = nn.ModuleList([nn.Sequential(nn.Conv2d(c, d, 1), nn.GELU()) for c in dims])
        self.sa_attn_blks = nn.ModuleList([_Stack([_EncoderLayer(d, heads, ff)]) for _ in dims])
        self.attn_blks = nn.ModuleList([_Stack([_DecoderLayer(d, heads, ff)]) for _ in dims[1:]])
        self.attn_pool = _EncoderLayer(d, heads, ff)
        self.score_linear = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1)
        )
        self.h_emb = nn.Parameter(torch.zeros(1, d // 2, cfg.pos_grid, 1))
        self.w_emb = nn.Parameter(torch.zeros(1, d // 2, 1, cfg.pos_grid))

    def position_embedding(self) -> Tensor:
        """[1, D, G, G]: the first D/2 channels vary along rows (h_emb), the others along columns."""
        g_h, g_w = self.h_emb.shape[2], self.w_emb.shape[3]
        return torch.cat([self.h_emb.expand(-1, -1, -1, g_w), self.w_emb.expand(-1, -1, g_h, -1)], dim=1)

    def tokens(self, level: int, feat: Tensor, size: tuple[int, int]) -> Tensor:
        """Level ``level``'s map [B, C, h, w] -> self-attended tokens [L, B, D]."""
        x = self.weight_pool[level](feat)
        if x.shape[2] > size[0] and x.shape[3] > size[1]:
            x = F.adaptive_avg_pool2d(x, size)
        pos = F.interpolate(self.position_embedding(), size=x.shape[2:], mode="bicubic", align_corners=False)
        x = self.dim_reduce[level](x).flatten(2).permute(2, 0, 1) + pos.flatten(2).permute(2, 0, 1)
        return self.sa_attn_blks[level](x)

    def forward(self, images: Tensor) -> Tensor:
        feats = self.semantic_model(normalise(images.float(), IMAGENET_MEAN, IMAGENET_STD))
        size = tuple(feats[-1].shape[2:])
        tokens = [self.tokens(i, feats[i], size) for i in reversed(range(len(feats)))]  # coarse first
        query = tokens[0]
        for block, key_value in zip(self.attn_blks, tokens[1:]):
            query = block(query, key_value)
        return self.score_linear(self.attn_pool(query).mean(dim=0)).squeeze(-1)


def topiq_config_from_state_dict(sd: Mapping[str, Tensor], base: TOPIQConfig = TOPIQConfig(), source: str = "TOPIQ file") -> TOPIQConfig:
    def need(key: str) -> Tensor:
        return need_key(sd, key, source, "TOPIQ-NR (CFANet, ResNet backbone)")

    if "weight_pool.0.splitconv.weight" not in sd:
        raise CheckpointFormatError(f"{source}: no gated pooling ('weight_pool.0.splitconv.weight'); a full-reference TOPIQ file?")
    layers = tuple(count_children(sd, f"semantic_model.layer{i}.") for i in range(1, 5))
    widths = tuple(need(f"semantic_model.layer{i}.0.conv1.weight").shape[0] for i in range(1, 5))
    return replace(
        base,
        backbone_layers=layers,
        stem_width=need("semantic_model.conv1.weight").shape[0],
        backbone_widths=widths,
        expansion=need("semantic_model.layer1.0.conv3.weight").shape[0] // widths[0],
        inter_dim=need("dim_reduce.0.0.weight").shape[0],
        feedforward_dim=need("attn_pool.linear1.weight").shape[0],
        gate_width=need("weight_pool.0.weight_blk.0.weight").shape[0],
        pos_grid=need("h_emb").shape[2],
    )


def load_topiq_nr(path: str | os.PathLike, base: TOPIQConfig = TOPIQConfig(), *, trust_pickle: bool = False) -> TOPIQNR:
    """pyiqa's ``cfanet_nr_*_res50`` file (``{"params": ...}``, loaded strictly) -> frozen TOPIQNR."""
    sd = read_pyiqa_state_dict(path, trust_pickle=trust_pickle)
    return load_frozen(TOPIQNR(topiq_config_from_state_dict(sd, base, str(path))), sd, str(path))
