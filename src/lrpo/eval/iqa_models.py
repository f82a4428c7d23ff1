"""Model-based no-reference IQA: MUSIQ, MANIQA, TOPIQ-NR and CLIP-IQA+ as pyiqa defines them.

BFR papers report these through pyiqa (IQA-PyTorch, chaofengc/IQA-PyTorch); each model here is
rebuilt in plain torch with the parameter names of pyiqa's published weight file for the default
metric, so that file loads strictly (every key used, no key left over) with no renaming:

  metric (pyiqa name)  registry name         file                                    container
  musiq                musiq-koniq           musiq_koniq_ckpt-e95806b9.pth           raw state dict
  maniqa               maniqa-koniq          ckpt_koniq10k.pt                        raw state dict
  topiq_nr             topiq-nr-koniq        cfanet_nr_koniq_res50-9a73138b.pth      {"params": state dict}
  clipiqa+             clipiqa-plus-prompts  CLIP-IQA+_learned_prompts-603f3273.pth  the context tensor itself
                       (+ clip-rn50 RN50.pt and clip-bpe-vocab, as CLIP-IQA)

(pyiqa 0.1.16: ``pyiqa/archs/{musiq,maniqa,topiq,clipiqa}_arch.py`` ``default_model_urls`` and
their ``load_pretrained_network(..., weight_keys)`` calls; ``default_model_configs.py`` for the
metric options.) The ImageNet backbones (MANIQA's ViT-B/8, TOPIQ's ResNet-50) are stored inside
those files, so no separate backbone file is needed; CLIP-IQA+ uses OpenAI's RN50 (registry
``clip-rn50``) and learns only the prompt context.

Every model takes images [N, 3, H, W] in [0, 1] (RGB) and returns a score [N]; **higher is better
for all four**. Preprocessing is part of each model, as in pyiqa:

* MUSIQ: x -> 2x - 1; multi-scale patches of 32 px from the image resized (bicubic, aspect kept)
  to longer sides 224 and 384 plus the native resolution; KonIQ MOS scale, about 0..100.
* MANIQA: x -> (x - 0.5) / 0.5; 20 crops of 224 px on a uniform grid (upscaled first when the
  shorter side is <= 224); the per-patch scores of all crops pooled with learned weights; ~0..1.
* TOPIQ-NR: ImageNet mean/std normalisation, the image at its native resolution; ~0..1.
* CLIP-IQA+: CLIP normalisation at native resolution without the attention pool's positional
  embedding; softmax of 100 x cosine over the learned ("good photo", "bad photo") prompt pair; (0, 1).

Hyper-parameters are read from tensor shapes where the file shows them, so small models saved in
the same layout load too (tests); what shapes cannot show (attention heads, MANIQA's residual
scale, the crop count) comes from the config defaults, which are pyiqa's for these files.

Cost of one 512 x 512 image at full size on a busy 2-core CPU (measured with random weights):
MUSIQ ~4 s, CLIP-IQA+ ~7 s (RN50), TOPIQ-NR ~9 s, MANIQA ~3.5-4.5 min (20 ViT-B/8 crops of 785 tokens); use a GPU for
MANIQA on more than a few images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model_files import (
    CheckpointFormatError,
    freeze,
    load_state_dict_strict,
    load_torch_file,
    unwrap_state_dict,
)
from ..weights import MissingWeightsError, WeightFile, get_entry, hub_file, register, resolve

__all__ = [
    "CLIPIQAPlus",
    "IQA_METRICS",
    "IQAMetric",
    "IQAScorer",
    "MANIQA",
    "MANIQAConfig",
    "MUSIQ",
    "MUSIQConfig",
    "TOPIQNR",
    "TOPIQConfig",
    "build_iqa_scorers",
    "load_clipiqa_plus",
    "load_maniqa",
    "load_musiq",
    "load_topiq_nr",
    "musiq_multiscale_tokens",
    "parse_iqa_requests",
    "read_prompt_context",
    "read_pyiqa_state_dict",
    "score_images",
]

# pyiqa's get_url_from_name: hf_hub_url(repo_id="chaofengc/IQA-PyTorch-Weights", filename=name)
# (file names URL-quoted: "+" is %2B); the same files are on the GitHub release "v0.1-weights".
PYIQA_WEIGHTS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
# The weight files carry no licence of their own; pyiqa is PolyForm Noncommercial 1.0.0 (its
# LICENSE; S-Lab License 1.0 for some components), so treat them as non-commercial.
PYIQA_LICENCE = "PolyForm-Noncommercial-1.0.0"


PYIQA_HUB_REPO = "chaofengc/IQA-PyTorch-Weights"


def _pyiqa_file(name: str, filename: str, description: str, prefix: str | None, bounds_mb: tuple[float, float]) -> WeightFile:
    # The URL quotes the name as pyiqa does ("+" is %2B).
    reason = ("pyiqa publishes no sha256 and no copy was reachable here to hash" + (
        f"; the name's {prefix} is checked as its prefix" if prefix else "") + " (the Hub states the sha256 as the "
        "file's ETag at download: checked)")
    return register(hub_file(name, PYIQA_HUB_REPO, filename, PYIQA_LICENCE, description, sha256_prefix=prefix,
                             min_mb=bounds_mb[0], max_mb=bounds_mb[1], container="torch", unpinned_reason=reason))


MUSIQ_KONIQ_WEIGHTS = _pyiqa_file(
    "musiq-koniq", "musiq_koniq_ckpt-e95806b9.pth",
    "MUSIQ trained on KonIQ-10k (pyiqa metric 'musiq'; converted by pyiqa from google-research/musiq)", "e95806b9",
    (10.0, 500.0),  # about 27 M parameters
)
MANIQA_KONIQ_WEIGHTS = _pyiqa_file(
    "maniqa-koniq", "ckpt_koniq10k.pt",
    "MANIQA trained on KonIQ-10k, ViT-B/8 backbone included (pyiqa metric 'maniqa'; IIGROUP/MANIQA)", None,
    (50.0, 1500.0),  # about 135 M parameters
)
TOPIQ_NR_KONIQ_WEIGHTS = _pyiqa_file(
    "topiq-nr-koniq", "cfanet_nr_koniq_res50-9a73138b.pth",
    "TOPIQ-NR (CFANet) trained on KonIQ-10k, ResNet-50 backbone included (pyiqa metric 'topiq_nr')", "9a73138b",
    (10.0, 800.0),  # a ResNet-50 and its heads
)
CLIPIQA_PLUS_WEIGHTS = _pyiqa_file(
    "clipiqa-plus-prompts", "CLIP-IQA+_learned_prompts-603f3273.pth",
    "CLIP-IQA+ learned prompt context [16, 512] for OpenAI CLIP RN50 (pyiqa metric 'clipiqa+'; needs clip-rn50)",
    "603f3273", (0.005, 5.0),  # a [16, 512] prompt context
)


def _bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # unused in eval mode; a file may omit it


# ----------------------------------------------------------------------------------------------
# reading pyiqa's files
# ----------------------------------------------------------------------------------------------
def read_pyiqa_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The flat state dict in one of pyiqa's files: a raw state dict, ``{"params": sd}`` (BasicSR
    style, TOPIQ) or ``{"state_dict": sd}``; a DataParallel ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = load_torch_file(path, trust_pickle=trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        hint = "" if trust_pickle else " (if it holds pickled objects from a trusted source, pass trust_pickle=True)"
        raise CheckpointFormatError(f"could not read {path} as a model file: {err}{hint}") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("params"), Mapping):
        obj = obj["params"]
    return unwrap_state_dict(obj, source=str(path))


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix<i>.`` (e.g. blocks) in a state dict."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _need(sd: Mapping[str, Tensor], key: str, source: str, model: str) -> Tensor:
    if key not in sd:
        raise CheckpointFormatError(f"{source}: no {key!r}; is it a {model} file (see `lrpo weights list`)?")
    return sd[key]


def _load(model: nn.Module, sd: Mapping[str, Tensor], source: str) -> nn.Module:
    load_state_dict_strict(model, sd, source=source, may_be_missing=_bn_counter)
    return freeze(model.float())


# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (timm's, MUSIQ's and Swin's MLP; dropout is 0 at inference)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)


def _tf_same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero padding of TensorFlow's 'SAME' convolutions: output ceil(n / stride), the odd pixel
    at the bottom / right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


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
        return F.conv2d(_tf_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


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
    x = _tf_same_pad(image, patch, patch)
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
        x = F.max_pool2d(_tf_same_pad(x, 3, 2), 3, 2)
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
    root = _need(sd, "conv_root.weight", source, "MUSIQ").shape[0]
    emb = _need(sd, "embedding.weight", source, "MUSIQ")
    token_side = math.isqrt(emb.shape[1] // (4 * root))
    grid = math.isqrt(_need(sd, "transformer_encoder.posembed_input.position_emb", source, "MUSIQ").shape[1])
    scales = _need(sd, "transformer_encoder.scaleembed_input.scale_emb", source, "MUSIQ").shape[0]
    cfg = replace(
        base, patch_size=4 * token_side, root_width=root, hidden_size=emb.shape[0], spatial_grid=grid,
        mlp_dim=_need(sd, "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight", source, "MUSIQ").shape[0],
        num_layers=_count(sd, "transformer_encoder.transformer.encoderblock_"),
    )
    if scales != cfg.num_scales:
        raise CheckpointFormatError(
            f"{source}: {scales} scale embeddings, but {len(cfg.longer_side_lengths)} resized scales + the native one were asked for"
        )
    return cfg


def load_musiq(path: str | os.PathLike, base: MUSIQConfig = MUSIQConfig(), *, trust_pickle: bool = False) -> MUSIQ:
    """pyiqa's MUSIQ file (raw state dict, loaded strictly) -> frozen float32 MUSIQ."""
    sd = read_pyiqa_state_dict(path, trust_pickle=trust_pickle)
    return _load(MUSIQ(musiq_config_from_state_dict(sd, base, str(path))), sd, str(path))


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
        feats = self.semantic_model(_normalise(images.float(), IMAGENET_MEAN, IMAGENET_STD))
        size = tuple(feats[-1].shape[2:])
        tokens = [self.tokens(i, feats[i], size) for i in reversed(range(len(feats)))]  # coarse first
        query = tokens[0]
        for block, key_value in zip(self.attn_blks, tokens[1:]):
            query = block(query, key_value)
        return self.score_linear(self.attn_pool(query).mean(dim=0)).squeeze(-1)


def topiq_config_from_state_dict(sd: Mapping[str, Tensor], base: TOPIQConfig = TOPIQConfig(), source: str = "TOPIQ file") -> TOPIQConfig:
    def need(key: str) -> Tensor:
        return _need(sd, key, source, "TOPIQ-NR (CFANet, ResNet backbone)")

    if "weight_pool.0.splitconv.weight" not in sd:
        raise CheckpointFormatError(f"{source}: no gated pooling ('weight_pool.0.splitconv.weight'); a full-reference TOPIQ file?")
    layers = tuple(_count(sd, f"semantic_model.layer{i}.") for i in range(1, 5))
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
    return _load(TOPIQNR(topiq_config_from_state_dict(sd, base, str(path))), sd, str(path))


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
        x = _normalise(images.float(), INCEPTION_MEAN, INCEPTION_STD)
        tokens = self.crop_tokens(_uniform_crops(x, self.config.crop_size, self.config.crops))
        score = self.fc_score(tokens).reshape(b, -1)
        weight = self.fc_weight(tokens).reshape(b, -1)
        return (weight * score).sum(dim=-1) / (weight.sum(dim=-1) + 1e-8)


def maniqa_config_from_state_dict(sd: Mapping[str, Tensor], base: MANIQAConfig = MANIQAConfig(), source: str = "MANIQA file") -> MANIQAConfig:
    def need(key: str) -> Tensor:
        return _need(sd, key, source, "MANIQA")

    patch = need("vit.patch_embed.proj.weight")
    grid = math.isqrt(need("vit.pos_embed").shape[1] - 1)
    depths = tuple(_count(sd, f"swintransformer1.layers.{i}.blocks.") for i in range(_count(sd, "swintransformer1.layers.")))
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
        vit_depth=_count(sd, "vit.blocks."),
        vit_mlp=need("vit.blocks.0.mlp.fc1.weight").shape[0],
        vit_classes=need("vit.head.weight").shape[0],
        num_tab=_count(sd, "tablock1."),
        swin_depths=depths,
        swin_heads=heads,
        swin_window=(math.isqrt(table) + 1) // 2,
        swin_mlp=need("swintransformer1.layers.0.blocks.0.mlp.fc1.weight").shape[0],
    )


def load_maniqa(path: str | os.PathLike, base: MANIQAConfig = MANIQAConfig(), *, trust_pickle: bool = False) -> MANIQA:
    """pyiqa's MANIQA file (raw state dict, loaded strictly, computed Swin buffers included) -> frozen MANIQA."""
    sd = read_pyiqa_state_dict(path, trust_pickle=trust_pickle)
    return _load(MANIQA(maniqa_config_from_state_dict(sd, base, str(path))), sd, str(path))


# ----------------------------------------------------------------------------------------------
# CLIP-IQA+ (Wang, Chan, Loy, AAAI 2023): CoOp-style learned context on CLIP RN50
# ----------------------------------------------------------------------------------------------
# pyiqa's PromptLearner (following the official CLIP-IQA code): prompts "X X ... X Good photo.."
# and "... Bad photo..", whose n_ctx "X" embeddings are replaced by the learned context, split
# in two halves around the first 3 class tokens ("good", "photo", "..": a length pyiqa hard-codes).
CLIPIQA_PLUS_CLASS_TEXTS = ("Good photo..", "Bad photo..")
CLIPIQA_PLUS_CLASS_TOKENS = 3


def read_prompt_context(path: str | os.PathLike) -> Tensor:
    """The learned context in a CLIP-IQA+ file, float32 [n_ctx, D] (shared by both prompts, the
    published file) or [2, n_ctx, D]. The published file is the bare tensor; a ``{"params":
    {"prompt_learner.ctx": ...}}`` file (pyiqa's re-trained variants) is read too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = load_torch_file(path)
    except Exception as err:  # noqa: BLE001
        raise CheckpointFormatError(f"could not read {path} as a CLIP-IQA+ prompt file: {err}") from err
    if isinstance(obj, Mapping):
        obj = obj.get("params", obj)
        obj = next((obj[k] for k in ("prompt_learner.ctx", "ctx") if isinstance(obj, Mapping) and k in obj), obj)
    if not isinstance(obj, Tensor) or obj.ndim not in (2, 3) or (obj.ndim == 3 and obj.shape[0] != 2):
        what = f"a tensor of shape {tuple(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__
        raise CheckpointFormatError(f"{path}: expected the prompt context [n_ctx, D] or [2, n_ctx, D], got {what}")
    return obj.detach().float()


def encode_text_embeddings(clip, embeddings: Tensor, eot: Tensor) -> Tensor:
    """CLIP's text tower from token embeddings [N, L, W] (instead of ids); eot [N] the end-token
    positions -> [N, embed_dim]. Causal attention: positions after the last EOT are cut."""
    length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu_(1)
    x = clip.ln_final(clip.transformer(x, causal))
    return x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection


class CLIPIQAPlus(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> P(good) [B] in (0, 1), higher is better.

    P(good) = softmax(s [cos(e, u_good), cos(e, u_bad)])[0], s = exp(logit_scale) = 100, e the RN50
    image embedding (native resolution, no positional embedding, as pyiqa's default), u the text
    embeddings of the two learned prompts (computed once here).
    """

    def __init__(self, clip, tokenizer, context: Tensor):
        super().__init__()
        if context.ndim == 2:
            context = context.unsqueeze(0).expand(len(CLIPIQA_PLUS_CLASS_TEXTS), -1, -1)
        n_ctx, width = context.shape[1:]
        if width != clip.token_embedding.weight.shape[1]:
            raise ValueError(f"prompt context of width {width} for a CLIP text tower of width {clip.token_embedding.weight.shape[1]}")
        self.clip = freeze(clip)
        ids = tokenizer(["X " * n_ctx + text for text in CLIPIQA_PLUS_CLASS_TEXTS]).to(clip.logit_scale.device)
        with torch.no_grad():
            emb = clip.token_embedding(ids)
            ctx = context.to(emb)
            k, half = CLIPIQA_PLUS_CLASS_TOKENS, n_ctx // 2
            prompts = torch.cat(
                [emb[:, :1], ctx[:, :half], emb[:, 1 + n_ctx : 1 + n_ctx + k], ctx[:, half:], emb[:, 1 + n_ctx + k :]], dim=1
            )
            text_features = encode_text_embeddings(clip, prompts, ids.argmax(dim=-1)).float()
        self.register_buffer("context", ctx.clone(), persistent=False)
        self.register_buffer("text_features", text_features, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        from ..rewards.clip_models import clip_preprocess
        from ..rewards.clipiqa import antonym_pair_probabilities

        features = self.clip.encode_image(clip_preprocess(images, None), use_positional_embedding=False)
        probs = antonym_pair_probabilities(features, self.text_features, self.clip.logit_scale.exp().float())
        return probs.mean(dim=1)


def load_clipiqa_plus(
    path: str | os.PathLike | None = None,
    clip_path: str | os.PathLike | None = None,
    vocab_path: str | os.PathLike | None = None,
) -> CLIPIQAPlus:
    """The prompt file (registry ``clipiqa-plus-prompts``), OpenAI RN50 (``clip-rn50``) and the CLIP
    vocabulary (``clip-bpe-vocab``); each None is looked up in the registry (MissingWeightsError)."""
    from ..rewards.clip_models import CLIP_RN50_WEIGHTS, load_clip
    from ..rewards.clip_tokenizer import CLIPTokenizer

    context = read_prompt_context(resolve(CLIPIQA_PLUS_WEIGHTS.name, path))
    clip = load_clip(resolve(CLIP_RN50_WEIGHTS.name, clip_path), quick_gelu=True)
    return CLIPIQAPlus(clip, CLIPTokenizer.from_file(vocab_path), context)


# ----------------------------------------------------------------------------------------------
# scoring and the metric table used by `lrpo evaluate`
# ----------------------------------------------------------------------------------------------
def score_images(model: nn.Module, images: Tensor, batch_size: int = 8) -> Tensor:
    """images [N, 3, H, W] in [0, 1] -> scores [N] float32 (no gradients, ``batch_size`` at a time)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] RGB, got {tuple(images.shape)}")
    with torch.no_grad():
        chunks = [model(images[i : i + batch_size].float().clamp(0, 1)).float() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else images.new_zeros(0)


@dataclass(frozen=True)
class IQAMetric:
    """One no-reference metric: its column in metrics.json, its model file and how to build it.

    batch_size: images per forward pass (MANIQA runs 20 ViT-B/8 crops per image, so one).
    """

    key: str
    label: str
    weights: str  # registry name of its own file
    description: str
    digits: int
    batch_size: int
    pyiqa_name: str


IQA_METRICS: dict[str, IQAMetric] = {
    m.key: m
    for m in [
        IQAMetric("musiq", "MUSIQ", MUSIQ_KONIQ_WEIGHTS.name,
                  "no-reference MUSIQ (KonIQ MOS, ~0..100; pyiqa 'musiq')", 2, 8, "musiq"),
        IQAMetric("maniqa", "MANIQA", MANIQA_KONIQ_WEIGHTS.name,
                  "no-reference MANIQA (KonIQ, ~0..1, 20 crops of 224 px; pyiqa 'maniqa')", 4, 1, "maniqa"),
        IQAMetric("topiq_nr", "TOPIQ-NR", TOPIQ_NR_KONIQ_WEIGHTS.name,
                  "no-reference TOPIQ (ResNet-50, KonIQ, ~0..1; pyiqa 'topiq_nr')", 4, 8, "topiq_nr"),
        IQAMetric("clipiqa_plus", "CLIP-IQA+", CLIPIQA_PLUS_WEIGHTS.name,
                  "no-reference CLIP-IQA+ (RN50, learned prompts, (0, 1); pyiqa 'clipiqa+')", 4, 8, "clipiqa+"),
    ]
}
# what `--iqa` accepts besides the keys: pyiqa's names and the registry names
_ALIASES = {alias: m.key for m in IQA_METRICS.values() for alias in (m.key, m.pyiqa_name, m.weights, m.key.replace("_", "-"))}


def parse_iqa_requests(items: Sequence[str]) -> dict[str, str | None] | None:
    """``--iqa`` values -> {metric key: explicit path or None (registry)}; None: none given (auto).

    Each item is ``all``, ``none``, ``NAME`` or ``NAME=PATH``; NAME is a key (musiq, maniqa,
    topiq_nr, clipiqa_plus), pyiqa's name (clipiqa+) or the registry name.
    """
    if not items:
        return None
    requests: dict[str, str | None] = {}
    for item in items:
        name, sep, path = (s.strip() for s in item.partition("="))
        if name.lower() in ("all", "none") and not sep:
            requests.update({k: None for k in IQA_METRICS} if name.lower() == "all" else {})
            continue
        key = _ALIASES.get(name.lower())
        if key is None or (sep and not path):
            raise ValueError(f"--iqa {item!r}: expected NAME or NAME=PATH with NAME one of {', '.join(IQA_METRICS)} (or all, none)")
        requests[key] = path or None
    return requests


class IQAScorer:
    """A loaded metric: ``score(images [N, 3, H, W] in [0, 1]) -> Tensor[N]`` on the CPU, float32."""

    def __init__(self, metric: IQAMetric, model: nn.Module, device: torch.device | str = "cpu"):
        self.metric = metric
        self.device = torch.device(device)
        self.model = freeze(model.to(self.device))

    def score(self, images: Tensor) -> Tensor:
        return score_images(self.model, images.to(self.device), self.metric.batch_size).cpu()


_LOADERS: dict[str, Callable[..., nn.Module]] = {
    "musiq": lambda path, **_: load_musiq(path),
    "maniqa": lambda path, **_: load_maniqa(path),
    "topiq_nr": lambda path, **_: load_topiq_nr(path),
    "clipiqa_plus": lambda path, clip_path=None, vocab_path=None: load_clipiqa_plus(path, clip_path, vocab_path),
}


def _missing_note(metric: IQAMetric, err: Exception, explicit: Mapping[str, str | None]) -> str:
    """'LABEL: not computed: file X not found (lrpo weights fetch NAME)' for the file that is
    missing (the metric's own, or CLIP-IQA+'s RN50 / vocabulary); X is the path given, if any."""
    name = next((n for n in explicit if str(err).startswith(f"{n}:")), metric.weights)
    return f"{metric.label}: not computed: file {explicit[name] or get_entry(name).filename} not found (lrpo weights fetch {name})"


def build_iqa_scorers(
    requests: Mapping[str, str | None] | None,
    device: torch.device | str = "cpu",
    *,
    clip_path: str | None = None,
    vocab_path: str | None = None,
) -> tuple[dict[str, IQAScorer], list[str]]:
    """Load the requested metrics; a missing file becomes a note instead of an error.

    requests: {key: path or None}; None means every metric, each looked up in the registry.
    A file that exists but does not fit its model (wrong layout, unreadable) is still an error.
    Returns ({key: scorer}, notes).
    """
    wanted = {k: None for k in IQA_METRICS} if requests is None else dict(requests)
    scorers, notes = {}, []
    for key, path in wanted.items():
        metric = IQA_METRICS[key]
        try:
            file = resolve(metric.weights, path)
            model = _LOADERS[key](file, clip_path=clip_path, vocab_path=vocab_path)
        except MissingWeightsError as err:
            notes.append(_missing_note(metric, err, {metric.weights: path, "clip-rn50": clip_path, "clip-bpe-vocab": vocab_path}))
            continue
        scorers[key] = IQAScorer(metric, model, device)
    return scorers, notes
