"""Weighted sum of reward terms: R = sum_k w_k * R_k with w_k >= 0 and sum_k w_k = 1 (SPEC section 4).

A composite is built from a spec that names registered rewards and their weights, e.g.

    build_composite({"dwt": {"weight": 0.3}, "identity": {"weight": 0.2, "path": "/models/sface.onnx"}})

Every key other than ``weight`` (and ``reward``) goes to the reward's factory. ``reward`` lets one
reward appear twice under different names: ``{"ssim_y": {"reward": "ssim", "channels": "y", ...}}``.

The output's ``details`` hold every term's raw score under its name, the term's own details as
``"name/detail"`` and the weighted sum as ``"total"`` (also in ``scores``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import torch

from .base import Reward, RewardInput, RewardOutput
from .registry import build_reward, reward_factory

__all__ = ["CompositeReward", "PRESETS", "build_composite", "check_weights"]

WEIGHT_TOLERANCE = 1e-6

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # SPEC section 4: the reference's reward. Needs the Face Reward Model, VGG-LPIPS and CLIP RN50
    # weights, none of which can be downloaded here (pass their paths through the terms' kwargs).
    # "lpips" scores 1 - LPIPS_vgg so that higher is better.
    "paper": {
        "face_reward": {"weight": 0.3},
        "lpips": {"weight": 0.3},
        "clipiqa": {"weight": 0.1},
        "dwt": {"weight": 0.3},
    },
    # Works offline with only the SFace file (shared/weights). Chosen by measurement
    # (bench/reward_sensitivity.py, 24 faces of shared/data/faces-hq at 64 and 128 px): each term
    # falls with blur, downscaling, noise and JPEG strength for (nearly) every face, except the
    # no-reference sharpness term, which rises with JPEG and unsharp masking; the total falls for
    # every face under every degradation and gaming probe (noise, sharpening, brightness, identity
    # mixing). Weights give the terms' spreads over mild-to-medium degradations shares of about
    # 0.32-0.40 (dwt), 0.18-0.26 (ssim), 0.23-0.41 (identity) and 0.09-0.10 (sharpness): fidelity
    # first, as in the paper, with a small perception term like the paper's 0.1 CLIPIQA.
    "offline": {
        "dwt": {"weight": 0.3},
        "ssim": {"weight": 0.25},
        "identity": {"weight": 0.3},
        "sharpness": {"weight": 0.15},
    },
    # No model file at all (for tests and CPU smoke runs).
    "no_weights": {
        "dwt": {"weight": 0.4},
        "ssim": {"weight": 0.45},
        "sharpness": {"weight": 0.15},
    },
}


def check_weights(weights: Mapping[str, float]) -> None:
    """Raise ValueError unless every weight is finite and >= 0 and they sum to 1 (within 1e-6)."""
    if not weights:
        raise ValueError("a composite reward needs at least one term")
    bad = {k: w for k, w in weights.items() if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0}
    total = math.fsum(float(w) for w in weights.values()) if not bad else float("nan")
    if bad or abs(total - 1.0) > WEIGHT_TOLERANCE:
        listing = ", ".join(f"{k}={w}" for k, w in weights.items())
        reason = f"invalid weights {bad}" if bad else f"they sum to {total:.9g}"
        raise ValueError(
            f"reward weights must be finite, >= 0 and sum to 1 (within {WEIGHT_TOLERANCE:g}); got {listing}: {reason}"
        )


class CompositeReward:
    """Weighted sum of reward terms.

    Args:
        components: name -> (reward, weight). Weights are checked by :func:`check_weights`.
    """

    name = "composite"

    def __init__(self, components: Mapping[str, tuple[Reward, float]]):
        check_weights({k: w for k, (_, w) in components.items()})
        for key in components:
            if key == "total" or "/" in key:
                raise ValueError(f"reward term name {key!r} is reserved or contains '/'")
        self.components = dict(components)
        self.needs_gt = any(r.needs_gt for r, _ in self.components.values())
        # the terms that score an image against its caption (checked before a run starts)
        self.caption_terms = [k for k, (r, _) in self.components.items() if getattr(r, "needs_caption", False)]

    @property
    def weights(self) -> dict[str, float]:
        return {k: float(w) for k, (_, w) in self.components.items()}

    def __call__(self, inp: RewardInput) -> RewardOutput:
        device = inp.images.device
        total = torch.zeros(inp.batch_size, dtype=torch.float32, device=device)
        details: dict[str, torch.Tensor] = {}
        for key, (reward, weight) in self.components.items():
            out = reward(inp)
            scores = out.scores.to(device, torch.float32)
            if not torch.isfinite(scores).all():
                raise RuntimeError(f"reward term {key!r} returned non-finite scores: {scores.tolist()}")
            details[key] = scores
            for sub, value in out.details.items():
                details[f"{key}/{sub}"] = value.to(device)
            if weight:
                total = total + weight * scores
        details["total"] = total
        return RewardOutput(total, details)

    def __repr__(self) -> str:
        terms = ", ".join(f"{k}: {w:g}" for k, w in self.weights.items())
        return f"CompositeReward({terms})"


def build_composite(spec: Mapping[str, Mapping[str, Any]] | str, **common: Any) -> CompositeReward:
    """Build a :class:`CompositeReward` from a spec (or the name of a :data:`PRESETS` entry).

    Args:
        spec: term name -> {"weight": w, ["reward": registered name], **factory kwargs}.
        common: kwargs given to every term's factory that accepts them (e.g. ``device="cuda"``);
            a term's own kwargs win.
    """
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown reward preset {spec!r}; known: {', '.join(sorted(PRESETS))}")
        spec = PRESETS[spec]
    weights = {}
    for key, term in spec.items():
        if not isinstance(term, Mapping) or "weight" not in term:
            raise ValueError(f"reward term {key!r} must be a mapping with a 'weight', got {term!r}")
        weights[key] = term["weight"]
    check_weights(weights)  # before building anything expensive
    components = {}
    for key, term in spec.items():
        kwargs = {k: v for k, v in term.items() if k not in ("weight", "reward")}
        name = term.get("reward", key)
        components[key] = (build_reward(name, **{**_accepted(name, common), **kwargs}), float(term["weight"]))
    return CompositeReward(components)


def _accepted(name: str, common: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``common`` that the factory of ``name`` accepts as keyword arguments."""
    if not common:
        return {}
    factory = reward_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except ValueError:
        return dict(common)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(common)
    return {k: v for k, v in common.items() if k in params}
