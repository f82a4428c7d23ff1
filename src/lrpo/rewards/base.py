"""What a reward is: inputs, outputs and the protocol every reward term follows.

Conventions shared by every reward in this package:

* **Higher is better.** A distance (LPIPS, L1 of wavelet bands) is turned into a score before it
  leaves the reward (``1 - LPIPS``, ``exp(-15 L)``), so a composite is a plain weighted sum.
* Images are ``[B, 3, H, W]`` float RGB in ``[0, 1]``: the decoded restorations *before* any colour
  fix (SPEC section 4). Rewards clamp to ``[0, 1]`` where their maths needs it.
* Rewards run under ``torch.no_grad()`` and never change their inputs.
* Each reward owns a device; it moves the inputs there itself and returns its scores on the
  device of ``inp.images``, so callers can mix rewards that live on different devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BaseReward",
    "MissingGroundTruthError",
    "Reward",
    "RewardInput",
    "RewardOutput",
]


class MissingGroundTruthError(ValueError):
    """A reward that compares against the ground truth was called with ``gt=None``."""


@dataclass(frozen=True)
class RewardInput:
    """One batch to score.

    images: [B, 3, H, W] float, RGB in [0, 1]; the restored outputs (decoded, before colour fix).
    gt:     [B, 3, H, W] float, RGB in [0, 1], the ground truth of each output; None for real LQ
            data. Same shape as ``images``.
    lq:     [B, 3, h, w] float, RGB in [0, 1], the degraded input (any resolution); optional.
    meta:   one dict per sample (e.g. ``{"name": "00017.png", "caption": "a smiling woman"}``);
            empty when there is none. Rewards read only the keys they document.
    """

    images: Tensor
    gt: Tensor | None = None
    lq: Tensor | None = None
    meta: Sequence[dict[str, Any]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"RewardInput.images must be a [B, 3, H, W] tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"RewardInput.images must be float in [0, 1], got dtype {x.dtype}")
        if self.gt is not None and tuple(self.gt.shape) != tuple(x.shape):
            raise ValueError(
                f"RewardInput.gt must have the shape of images {tuple(x.shape)}, got {tuple(self.gt.shape)}"
            )
        if self.lq is not None and (self.lq.ndim != 4 or self.lq.shape[0] != x.shape[0]):
            raise ValueError(f"RewardInput.lq must be [B={x.shape[0]}, 3, h, w], got {tuple(self.lq.shape)}")
        if len(self.meta) not in (0, x.shape[0]):
            raise ValueError(f"RewardInput.meta must hold 0 or B={x.shape[0]} dicts, got {len(self.meta)}")

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "RewardInput":
        """The same batch with its tensors on ``device`` (and cast to ``dtype`` if given)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)

        return RewardInput(move(self.images), move(self.gt), move(self.lq), self.meta)

    def require_gt(self, reward_name: str) -> Tensor:
        """The ground truth, or a clear error naming the reward that needs it."""
        if self.gt is None:
            raise MissingGroundTruthError(
                f"reward {reward_name!r} compares outputs with the ground truth, but RewardInput.gt is None "
                f"(real-LQ data has no GT: drop this term or use a no-reference reward)"
            )
        return self.gt

    def meta_value(self, index: int, key: str) -> Any:
        """``meta[index][key]`` or None when there is no meta or no such key."""
        if not self.meta:
            return None
        return self.meta[index].get(key)


class RewardOutput:
    """Scores of one batch.

    scores:  [B] float32, higher is better.
    details: named sub-terms, each [B] float32 (e.g. ``{"psnr": ..., "ssim": ...}``).
    """

    __slots__ = ("scores", "details")

    def __init__(self, scores: Tensor, details: dict[str, Tensor] | None = None):
        if scores.ndim != 1:
            raise ValueError(f"RewardOutput.scores must be [B], got shape {tuple(scores.shape)}")
        self.scores = scores.float()
        self.details = {k: v.float() for k, v in (details or {}).items()}
        for k, v in self.details.items():
            if v.shape != self.scores.shape:
                raise ValueError(f"RewardOutput.details[{k!r}] has shape {tuple(v.shape)}, expected {tuple(scores.shape)}")

    def to(self, device: torch.device | str) -> "RewardOutput":
        return RewardOutput(self.scores.to(device), {k: v.to(device) for k, v in self.details.items()})

    def __repr__(self) -> str:
        return f"RewardOutput(scores={self.scores}, details={sorted(self.details)})"


@runtime_checkable
class Reward(Protocol):
    """A reward term. ``needs_gt`` says whether ``inp.gt`` must be set.

    Anything with these attributes plugs into :class:`~lrpo.rewards.composite.CompositeReward` and
    the registry; :class:`BaseReward` supplies the common plumbing.
    """

    name: str
    needs_gt: bool

    def __call__(self, inp: RewardInput) -> RewardOutput: ...


class BaseReward:
    """Plumbing shared by the rewards here: no_grad, GT check, device moves, output checks.

    Subclasses set ``name`` and ``needs_gt`` and implement :meth:`score`, which receives the batch
    already on ``self.device`` in float32 and with ``gt`` present when ``needs_gt``.
    """

    name: str = "reward"
    needs_gt: bool = False
    needs_caption: bool = False  # True: every sample needs meta["caption"]

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def score(self, inp: RewardInput) -> RewardOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, inp: RewardInput) -> RewardOutput:
        if self.needs_gt:
            inp.require_gt(self.name)
        with torch.no_grad():
            out = self.score(inp.to(self.device, torch.float32))
        if out.scores.shape != (inp.batch_size,):
            raise RuntimeError(
                f"reward {self.name!r} returned scores of shape {tuple(out.scores.shape)} for a batch of {inp.batch_size}"
            )
        return out.to(inp.images.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"
