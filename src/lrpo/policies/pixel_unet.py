"""A small pixel-space conditional diffusion restorer that trains on a CPU and scales to 512 on a GPU.

Design for fast convergence (SPEC section 11 found the naive eps-prediction UNet does not reach
bicubic fidelity on a CPU budget):
  * a stage-1 regression CNN restores the LQ first (DiffBIR's two-stage design); its output and
    the LQ condition the UNet;
  * the diffusion runs on the *residual* ``(hq - base) * residual_scale``, where ``base`` is the
    stage-1 output (or the LQ when there is no stage 1), so the UNet only has to add detail. With
    the zero-initialised output layer an untrained *x0*-prediction model returns ``base``; an
    untrained v-prediction model does not: v = 0 leaves x_t nearly unchanged along the DDIM path, so it
    returns ``base + x_T / residual_scale`` (noise) until trained;
  * x0-prediction by default (it fits the MMSE image first, which is what a small CPU budget
    reaches; SPEC section 11); v and eps are available and suit longer GPU runs.
Images enter in [0, 1] and are mapped to [-1, 1] internally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import check_state_dict
from ..config import PolicyConfig
from .sampling import restore_images


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps t [B] -> [B, dim] (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def cpu_channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory on the CPU, else unchanged. A convolution whose input is
    channels-last gives a channels-last output, so one call at a network's entry runs all its
    convolutions in that layout, which oneDNN computes 1.14x (bf16) to 1.62x (fp32) faster than the
    default one on our CPU (bench/cpu_speed.py). Its kernels round a row differently at more batch
    sizes than the default layout's, which breaks the equality of one RL training process with two
    (tests/rl/test_trainer.py), so only restoring policies and pretraining, one process at one batch
    size, use it (:meth:`PixelPolicy.use_channels_last`)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def _groups(ch: int) -> int:
    return min(8, ch // 4) if ch >= 8 else 1


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, 2 * c_out)  # scale and shift
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # block starts as identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.t_proj(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [b, heads, hw, d] for scaled_dot_product_attention
        y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class Stage1CNN(nn.Module):
    """Regression restorer: LQ [B,3,H,W] in [-1,1] -> restored image in [-1,1] (LQ + residual)."""

    channels_last = False  # activations channels-last on the CPU (cpu_channels_last; PixelPolicy.use_channels_last)

    def __init__(self, channels: int = 32, blocks: int = 4):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
            for _ in range(blocks)
        )
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lq: Tensor) -> Tensor:
        h = self.head(cpu_channels_last(lq) if self.channels_last else lq)
        for block in self.body:
            h = h + block(h)
        return (lq + self.tail(F.silu(h))).contiguous()


class ConditionalUNet(nn.Module):
    """UNet eps/v/x0 predictor on [x_t, cond] channels."""

    channels_last = False  # activations channels-last on the CPU (cpu_channels_last; PixelPolicy.use_channels_last)

    def __init__(self, in_ch: int, out_ch: int, cfg: PolicyConfig):
        super().__init__()
        base = cfg.base_channels
        t_dim = base * 4
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(in_ch, base, 3, padding=1)
        chans = [base * m for m in cfg.channel_mults]
        self.down = nn.ModuleList()
        skip_ch = [base]
        c = base
        for level, ch in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c, ch, t_dim, cfg.dropout))
                c = ch
                skip_ch.append(c)
            attn = SelfAttention(c) if level in cfg.attention_levels else nn.Identity()
            downsample = nn.Conv2d(c, c, 3, stride=2, padding=1) if level < len(chans) - 1 else nn.Identity()
            if level < len(chans) - 1:
                skip_ch.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, "attn": attn, "down": downsample}))
        self.mid1 = ResBlock(c, c, t_dim, cfg.dropout)
        self.mid_attn = SelfAttention(c) if cfg.attention_levels else nn.Identity()
        self.mid2 = ResBlock(c, c, t_dim, cfg.dropout)
        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            ch = chans[level]
            blocks = nn.ModuleList()
            # one more block than the encoder: it takes the skip of the level's downsampling
            for _ in range(cfg.blocks_per_level + 1):
                blocks.append(ResBlock(c + skip_ch.pop(), ch, t_dim, cfg.dropout))
                c = ch
            attn = SelfAttention(c) if level in cfg.attention_levels else nn.Identity()
            upsample = nn.Conv2d(c, c, 3, padding=1) if level > 0 else nn.Identity()
            self.up.append(nn.ModuleDict({"blocks": blocks, "attn": attn, "up": upsample}))
        assert not skip_ch, "every encoder activation is consumed by exactly one decoder block"
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, out_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.t_mlp[0].in_features).to(x.dtype))
        h = self.stem(cpu_channels_last(x) if self.channels_last else x)
        skips = [h]
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, temb)
                skips.append(h)
            h = level["attn"](h)
            if not isinstance(level["down"], nn.Identity):
                h = level["down"](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for level in self.up:
            for block in level["blocks"]:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            h = level["attn"](h)
            if not isinstance(level["up"], nn.Identity):
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h))).contiguous()  # callers get the default layout


class PixelPolicy(nn.Module):
    """Pixel-space conditional diffusion restorer implementing :class:`lrpo.policies.Policy`.

    Condition tensor: [B, 6, R, R] = (LQ, stage-1 output) in [-1, 1], or [B, 3, R, R] (LQ) when
    ``stage1 == "none"``. Diffusion space: the scaled residual to the base image when
    ``residual`` is set, else the image itself in [-1, 1].
    """

    resize_antialias = None  # callers resize faces in and out bicubic, antialiased only when shrinking
    compilable = True  # restore_faces runs the compiled forward it is handed

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.prediction = cfg.prediction
        self.stage1 = Stage1CNN(cfg.stage1_channels, cfg.stage1_blocks) if cfg.stage1 == "cnn" else None
        cond_ch = 6 if self.stage1 is not None else 3
        self.unet = ConditionalUNet(3 + cond_ch, 3, cfg)

    @property
    def resolution(self) -> int:
        return int(self.cfg.resolution)

    # -- conditioning -----------------------------------------------------------------------
    def _resize(self, images: Tensor) -> Tensor:
        r = self.cfg.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bicubic", align_corners=False, antialias=True)
        return images

    def stage1_restore(self, lq: Tensor) -> Tensor:
        """Stage-1 output in [-1, 1] for LQ [B,3,H,W] in [0,1] (the LQ itself without a stage 1)."""
        x = self._resize(lq) * 2 - 1
        return self.stage1(x) if self.stage1 is not None else x

    def condition(self, lq: Tensor) -> Tensor:
        x = self._resize(lq) * 2 - 1
        if self.stage1 is None:
            return x
        with torch.no_grad():  # stage 1 is trained by its own loss, not through the diffusion
            s1 = self.stage1(x).clamp(-1, 1)
        return torch.cat([x, s1], dim=1)

    def base_image(self, cond: Tensor) -> Tensor:
        """The image the residual is added to, in [-1, 1]."""
        return cond[:, 3:6] if self.stage1 is not None else cond[:, :3]

    def encode(self, images: Tensor, cond: Tensor) -> Tensor:
        x = self._resize(images) * 2 - 1
        if self.cfg.residual:
            return (x - self.base_image(cond)) * self.cfg.residual_scale
        return x

    def decode(self, x0: Tensor, cond: Tensor) -> Tensor:
        if self.cfg.residual:
            x = self.base_image(cond) + x0 / self.cfg.residual_scale
        else:
            x = x0
        return ((x + 1) / 2).clamp(0, 1)

    def sample_shape(self, cond: Tensor) -> tuple[int, ...]:
        return (cond.shape[0], 3, self.cfg.resolution, self.cfg.resolution)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t)

    def trainable_parameters(self) -> list[nn.Parameter]:
        # RL updates the diffusion network; the stage-1 restorer stays frozen (as in DiffBIR)
        return list(self.unet.parameters())

    def fsdp_units(self) -> list[nn.Module]:
        """What ``engine=fsdp`` shards: the diffusion network (the stage-1 restorer stays whole)."""
        return [self.unet]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint stores: the whole state (the pixel policy has no frozen pretrained part)."""
        return self.state_dict()

    def load_trainable_state_dict(self, sd: dict[str, Tensor], source: str = "state dict") -> None:
        """Strict inverse of :meth:`trainable_state_dict`: every name and shape must match."""
        check_state_dict(self, sd, source=source)
        self.load_state_dict(sd, strict=True)

    def inference_only(self) -> "PixelPolicy":
        """This policy, from now on only restoring: its convolutions run channels-last on the CPU
        (:meth:`use_channels_last`), which a policy in RL training does not do."""
        return self.use_channels_last()

    def use_channels_last(self) -> "PixelPolicy":
        """Run the convolutions on channels-last activations on the CPU (:func:`cpu_channels_last`;
        1.14-1.62x faster restoring there, about 1.1x pretraining). Its rounding depends more on the batch
        size than the default layout's, so RL training, whose processes split a batch, keeps that."""
        self.unet.channels_last = True
        if self.stage1 is not None:
            self.stage1.channels_last = True
        return self

    def restore_faces(self, sampler, lq: Tensor, seeds: list[int], precision: str = "fp32", forward=None) -> Tensor:
        """LQ [B,3,H,W] in [0,1] -> restored [B,3,R,R] in [0,1] (:func:`lrpo.policies.sampling.restore_images`)."""
        return restore_images(self, sampler, lq, seeds, precision, forward=forward)


def build_policy(cfg: PolicyConfig) -> PixelPolicy:
    if cfg.kind != "pixel_unet":
        raise ValueError(f"policy.kind {cfg.kind!r} is not known; expected 'pixel_unet'")
    return PixelPolicy(cfg)
