"""The Policy interface: what the samplers and trainers need from a conditional diffusion restorer.

Notation (SPEC sections 1-2):
    lq      degraded input image, [B, 3, H, W] in [0, 1]
    cond    the policy's condition tensor, batch-first (pixel policy: LQ and stage-1 output stacked
            on channels; latent policy: the VAE latent of the stage-1 output)
    x_0     a clean sample in the policy's *diffusion space* (pixels, a residual, or a VAE latent)
    x_t     x_0 noised to timestep t
    output  the network's raw prediction, of type ``policy.prediction`` ("eps", "v" or "x0")

A policy only predicts; the DDIM maths lives in :mod:`lrpo.diffusion`. Because ``cond`` is one
batch-first tensor, trainers can index, repeat and concatenate it like any other batch.

What restoring callers (``lrpo.inference.restorer.Restorer``, the demo) need is part of the protocol too:
``resolution``, ``resize_antialias``, ``compilable``, ``inference_only`` and ``restore_faces``, so they never probe a
policy for what kind it is.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Policy(Protocol):
    prediction: str  # "eps" | "v" | "x0"
    cfg: object  # the policy's config section (PolicyConfig, LatentPolicyConfig): a checkpoint rebuilds it from this
    # how callers resize faces to the policy's side and back (bicubic): None antialiases only when
    # shrinking; True in both directions (DiffBIR's resize, which the latent policy was trained with)
    resize_antialias: bool | None
    # whether restore_faces runs a compiled forward (lrpo.policies.compiled) it is handed
    compilable: bool

    @property
    def resolution(self) -> int:
        """Side R of the faces the policy restores ([B, 3, R, R]; the crops photos are aligned to)."""

    def condition(self, lq: Tensor) -> Tensor:
        """LQ images [B,3,H,W] in [0,1] -> condition tensor [B, ...] (deterministic)."""

    def encode(self, images: Tensor, cond: Tensor) -> Tensor:
        """Clean images [B,3,H,W] in [0,1] -> diffusion-space x_0 (used for targets and the GT path)."""

    def decode(self, x0: Tensor, cond: Tensor) -> Tensor:
        """Diffusion-space x_0 -> images [B,3,H,W] in [0,1] (clamped)."""

    def sample_shape(self, cond: Tensor) -> tuple[int, ...]:
        """Shape of x_T for this condition batch, batch dimension included."""

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Raw network output for noisy x_t [B, ...] at integer timesteps t [B]."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the RL update may change (the frozen backbone is excluded)."""

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint stores (the latent policy: ControlNet or LoRA only; the pixel one: everything)."""

    def load_trainable_state_dict(self, sd: dict[str, Tensor], source: str = "state dict") -> None:
        """Strict inverse of ``trainable_state_dict``; a mismatch names ``source`` and the keys."""

    def fsdp_units(self) -> list[torch.nn.Module]:
        """What ``engine=fsdp`` shards, inner modules first (lrpo.engine)."""

    def inference_only(self) -> "Policy":
        """This policy, switched to the fastest numerics for restoring (it will not be trained from
        here on: the PPO ratio's exactness does not bind it); returns itself."""

    def restore_faces(self, sampler, lq: Tensor, seeds: list[int], precision: str = "fp32",
                      forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """LQ faces [B,3,H,W] in [0,1] -> restored [B,3,R,R] in [0,1]: one DDIM rollout from each
        seed, decoded (no grad). ``precision`` is the forward's autocast and ``forward`` a compiled
        forward, where the policy takes them (see ``compilable``)."""
