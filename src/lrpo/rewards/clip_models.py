"""CLIP (Radford et al., 2021) in plain torch, with the parameter names of the published files.

One architecture, two families of files:

* OpenAI CLIP (``RN50.pt`` ...): TorchScript archives; the image tower is a ModifiedResNet
  (``visual.conv1..3``, ``visual.layer{1..4}.N.*``, ``visual.attnpool.{positional_embedding,
  q_proj,k_proj,v_proj,c_proj}``) or a ViT; activations are QuickGELU (x * sigmoid(1.702 x)).
* OpenCLIP (``open_clip_pytorch_model.bin`` for ViT-H-14 laion2b_s32b_b79k, and HPSv2-style
  fine-tunes stored as ``{"state_dict": ...}``): the same names for its ``CLIP`` class, a ViT image
  tower (``visual.conv1``, ``visual.class_embedding``, ``visual.positional_embedding``,
  ``visual.ln_pre``, ``visual.transformer.resblocks.N.*``, ``visual.ln_post``, ``visual.proj``),
  exact GELU, and attention heads of width 80 for ViT-H-14.

Text tower (both): ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N.{ln_1,
attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final``,
``text_projection``, and ``logit_scale`` (log of the softmax temperature's inverse; exp = 100 for
OpenAI's models).

Hyper-parameters are inferred from tensor shapes (:func:`clip_config_from_state_dict`), as
OpenAI's loader does; what shapes cannot tell (the activation, the attention head width) comes
from the caller or from the known-model table below.

Image inputs of the towers are CLIP-normalised: ``(x - CLIP_MEAN) / CLIP_STD`` with x in [0, 1]
(:func:`clip_preprocess`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..weights import WeightFile, hub_file, register
from ..model_files import freeze, load_state_dict_strict, read_state_dict
from ..nets.clip import Transformer

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIP_MEAN",
    "CLIP_STD",
    "OPENAI_RN50",
    "OPENCLIP_VIT_H_14",
    "build_clip_from_state_dict",
    "clip_config_from_state_dict",
    "clip_preprocess",
    "load_clip",
]

CLIP_RN50_WEIGHTS = register(
    WeightFile(
        "clip-rn50",
        "RN50.pt",
        "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        "MIT",
        "OpenAI CLIP RN50 (TorchScript archive); the backbone of CLIP-IQA",
        # OpenAI publishes each file under its sha256 (the URL's second-to-last component)
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        244.0,
        container="torchscript",
    )
)
OPENCLIP_VIT_H_14_WEIGHTS = register(
    hub_file(
        "openclip-vit-h-14",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "open_clip_pytorch_model.bin",
        "MIT",
        "OpenCLIP ViT-H-14 trained on LAION-2B (laion2b_s32b_b79k); the base of HPSv2 and the Face Reward Model",
        size_mb=3944.0,
        container="torch",
        unpinned_reason="the Hub serves it from Git LFS; no copy was reachable here to hash and LAION states no sha256 "
        "outside the Hub (which states it as the file's ETag at download: checked)",
    )
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Entries of OpenAI's TorchScript archives that are model attributes, not weights.
_OPENAI_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# ViT head widths that shapes cannot reveal, keyed by (width, layers, patch size). OpenAI's ViTs use
# 64 (the default); OpenCLIP's ViT-H-14 config says head_width 80 (16 heads of 1280 channels).
KNOWN_VISION_HEAD_WIDTHS = {(1280, 32, 14): 80}


@dataclass(frozen=True)
class CLIPConfig:
    """Everything needed to build a :class:`CLIP`.

    vision_layers: a 4-tuple of Bottleneck counts (ModifiedResNet) or a layer count (ViT).
    vision_width:  the ResNet's base width (64 for RN50) or the ViT width.
    *_head_width:  channels per attention head (heads = width / head_width); for the ResNet the
                   attention pool works on ``32 * vision_width`` channels.
    quick_gelu:    OpenAI's x * sigmoid(1.702 x) (True) or exact GELU (OpenCLIP's LAION models).
    """

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, ...]
    vision_width: int
    vision_patch_size: int | None
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    quick_gelu: bool
    vision_head_width: int = 64
    text_head_width: int = 64

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision_layers, tuple)

    @property
    def vision_heads(self) -> int:
        channels = self.vision_width * 32 if self.is_resnet else self.vision_width
        return _heads(channels, self.vision_head_width, "vision")

    @property
    def text_heads(self) -> int:
        return _heads(self.text_width, self.text_head_width, "text")


def _heads(width: int, head_width: int, tower: str) -> int:
    if head_width <= 0 or width % head_width:
        raise ValueError(f"{tower} width {width} is not a multiple of the head width {head_width}; pass the right {tower}_head_width")
    return width // head_width


OPENAI_RN50 = CLIPConfig(
    embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None,
    context_length=77, vocab_size=49408, text_width=512, text_layers=12, quick_gelu=True,
)
OPENCLIP_VIT_H_14 = CLIPConfig(
    embed_dim=1024, image_resolution=224, vision_layers=32, vision_width=1280, vision_patch_size=14,
    context_length=77, vocab_size=49408, text_width=1024, text_layers=24, quick_gelu=False, vision_head_width=80,
)


# ----------------------------------------------------------------------------------------------
# building blocks (the transformer is lrpo.nets.clip's, shared with the latent policy's text tower)
# ----------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet bottleneck whose stride is an average pool before the third conv (anti-aliased)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # key names "downsample.0" (conv) and "downsample.1" (bn); the pool sits at "-1"
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pools [B, C, H, W] to [B, output_dim]: the mean token attends to all tokens (one query).

    use_positional_embedding=False drops the learned embedding, which lets any H, W in (the
    CLIP-IQA convention of pyiqa); with it, H = W = spacial_dim is required.
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spacial_dim**2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor, use_positional_embedding: bool = True) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # [B, 1 + HW, C]
        if use_positional_embedding:
            if tokens.shape[1] != self.positional_embedding.shape[0]:
                grid = round(math.sqrt(self.positional_embedding.shape[0] - 1))
                raise ValueError(
                    f"the attention pool's positional embedding covers a {grid}x{grid} grid, got {h}x{w}: feed "
                    f"{grid * 32}px images or disable the positional embedding"
                )
            tokens = tokens + self.positional_embedding.to(tokens.dtype)
        heads, d = self.num_heads, c // self.num_heads
        # Only the pooled (first) token's output is used, so only its query is computed.
        q = self.q_proj(tokens[:, :1]).view(b, 1, heads, d).transpose(1, 2)
        k = self.k_proj(tokens).view(b, -1, heads, d).transpose(1, 2)
        v = self.v_proj(tokens).view(b, -1, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, d]
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avg-pool, anti-aliased strides, attention pooling."""

    def __init__(self, layers: tuple[int, ...], output_dim: int, heads: int, input_resolution: int, width: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: Tensor, use_positional_embedding: bool = True) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x, use_positional_embedding)


class VisionTransformer(nn.Module):
    """ViT image tower: patch conv, class token, learned positions, transformer, class-token output."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int, quick_gelu: bool):
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: Tensor, use_positional_embedding: bool = True) -> Tensor:
        if x.shape[-2:] != (self.input_resolution, self.input_resolution):
            raise ValueError(f"this ViT takes {self.input_resolution}x{self.input_resolution} images, got {tuple(x.shape[-2:])}")
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid^2, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        if use_positional_embedding:
            x = x + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class CLIP(nn.Module):
    """Image and text towers projected to a shared ``embed_dim`` space. Built to be loaded (the
    embeddings start at zero); see :func:`build_clip_from_state_dict`.

    encode_image(x: [B, 3, R, R] CLIP-normalised) -> [B, embed_dim] (not normalised)
    encode_text(tokens: [N, L] int64, L <= context_length, EOT = the largest id) -> [N, embed_dim]
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        if cfg.is_resnet:
            self.visual: nn.Module = ModifiedResNet(
                cfg.vision_layers, cfg.embed_dim, cfg.vision_heads, cfg.image_resolution, cfg.vision_width
            )
        else:
            self.visual = VisionTransformer(
                cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width, cfg.vision_layers,
                cfg.vision_heads, cfg.embed_dim, cfg.quick_gelu,
            )
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.quick_gelu)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07

    def encode_image(self, x: Tensor, use_positional_embedding: bool = True) -> Tensor:
        return self.visual(x, use_positional_embedding)

    def encode_text(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.config.context_length:
            raise ValueError(f"tokens must be [N, L <= {self.config.context_length}], got {tuple(tokens.shape)}")
        eot = tokens.argmax(dim=-1)
        # Causal attention: positions after the last EOT never influence it, so cut the padding.
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        # boolean (True = may not attend): valid whatever dtype autocast gives the queries
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu_(1)
        x = self.ln_final(self.transformer(x, causal))
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def clip_config_from_state_dict(
    state_dict: dict[str, Tensor],
    *,
    quick_gelu: bool,
    vision_head_width: int | None = None,
    text_head_width: int = 64,
) -> CLIPConfig:
    """Infer a :class:`CLIPConfig` from parameter shapes (as OpenAI's ``build_model`` does).

    quick_gelu:         True for OpenAI's files, False for OpenCLIP's LAION-trained ones.
    vision_head_width:  None: the :data:`KNOWN_VISION_HEAD_WIDTHS` entry, else 64.
    """
    sd = state_dict
    try:
        if "visual.proj" in sd:
            width = sd["visual.conv1.weight"].shape[0]
            layers: int | tuple[int, ...] = _count_blocks(sd, "visual.transformer.resblocks.")
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1))
            resolution = patch * grid
            if vision_head_width is None:
                vision_head_width = KNOWN_VISION_HEAD_WIDTHS.get((width, layers, patch), 64)
        else:
            layers = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4))
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            patch = None
            grid = round(math.sqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1))
            resolution = grid * 32
            vision_head_width = vision_head_width or 64
        return CLIPConfig(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=resolution,
            vision_layers=layers,
            vision_width=width,
            vision_patch_size=patch,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=sd["ln_final.weight"].shape[0],
            text_layers=_count_blocks(sd, "transformer.resblocks."),
            quick_gelu=quick_gelu,
            vision_head_width=vision_head_width,
            text_head_width=text_head_width,
        )
    except KeyError as err:
        raise ValueError(f"not a CLIP state dict: key {err} is missing") from None


def _count_blocks(sd: dict[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def build_clip_from_state_dict(
    state_dict: dict[str, Tensor],
    *,
    quick_gelu: bool,
    vision_head_width: int | None = None,
    text_head_width: int = 64,
    source: str = "CLIP state dict",
) -> CLIP:
    """A frozen float32 :class:`CLIP` holding ``state_dict``, loaded strictly.

    OpenAI archives' attribute entries (input_resolution, context_length, vocab_size) are skipped;
    BatchNorm ``num_batches_tracked`` counters may be absent (unused in eval mode).
    """
    sd = {k: v for k, v in state_dict.items() if k not in _OPENAI_ARCHIVE_EXTRAS}
    cfg = clip_config_from_state_dict(sd, quick_gelu=quick_gelu, vision_head_width=vision_head_width, text_head_width=text_head_width)
    model = CLIP(cfg)
    load_state_dict_strict(model, sd, source=source, may_be_missing=lambda k: k.endswith("num_batches_tracked"))
    return freeze(model.float())


def load_clip(
    path: str | os.PathLike,
    *,
    quick_gelu: bool,
    vision_head_width: int | None = None,
    text_head_width: int = 64,
    trust_pickle: bool = False,
) -> CLIP:
    """Read a CLIP file (TorchScript archive, state dict, ``{"state_dict": ...}`` or safetensors)."""
    sd = read_state_dict(path, trust_pickle=trust_pickle)
    return build_clip_from_state_dict(
        sd, quick_gelu=quick_gelu, vision_head_width=vision_head_width, text_head_width=text_head_width, source=str(path)
    )


def clip_preprocess(
    images: Tensor,
    size: int | None,
    *,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """images [B, 3, H, W] in [0, 1] -> CLIP-normalised [B, 3, size, size] float32.

    size=None keeps the resolution. Otherwise the shorter side is resized to ``size`` (the longer
    one to ``int(size * long / short)``, as torchvision's ``Resize(size)``), then centre-cropped
    to ``size`` x ``size``; resampled values are clamped to [0, 1] as an 8-bit image would be.
    """
    x = images.float()
    if size is not None:
        h, w = x.shape[-2:]
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(size * long / short)
        new_hw = (size, new_long) if h <= w else (new_long, size)
        if new_hw != (h, w):
            x = F.interpolate(x, size=new_hw, mode=mode, align_corners=False, antialias=antialias).clamp(0, 1)
        top, left = int(round((new_hw[0] - size) / 2)), int(round((new_hw[1] - size) / 2))
        x = x[..., top : top + size, left : left + size]
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std
