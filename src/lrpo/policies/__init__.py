"""Policies: the protocol, the CPU pixel policy and the SD2.1 + ControlNet latent policy.

``build_policy_from_dict`` dispatches on the ``kind`` of a config's ``policy`` section, so a
checkpoint or a policy YAML rebuilds whichever policy it describes.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Policy

POLICY_KINDS = ("pixel_unet", "sd21_controlnet")


def build_policy_from_dict(raw: dict[str, Any], device: torch.device | str = "cpu", load_files: bool = True):
    """Policy from a ``policy`` config section. The latent policy loads the model files its
    config names (SD 2.1, ControlNet, SwinIR) unless ``load_files`` is False (random weights)."""
    from ..config import ConfigError, PolicyConfig, from_dict

    kind = raw.get("kind", "pixel_unet")
    if kind == "pixel_unet":
        from .pixel_unet import build_policy

        return build_policy(from_dict(PolicyConfig, raw, prefix="policy")).to(device)
    if kind == "sd21_controlnet":
        from ..optional import require

        require("diffusers", "the SD 2.1 + ControlNet policy (policy.kind: sd21_controlnet)")
        from .latent import LatentPolicy
        from .latent_config import LatentPolicyConfig

        cfg = from_dict(LatentPolicyConfig, _resolve_registry_paths(raw), prefix="policy")
        if not load_files:
            cfg.random_init = True
        return LatentPolicy.from_config(cfg, device)
    raise ConfigError(f"policy.kind {kind!r} is not known; expected one of {list(POLICY_KINDS)}")


def _resolve_registry_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """``"registry:NAME"`` values become the local path of registry file NAME (lrpo weights)."""
    from .. import weights

    return {
        k: str(weights.resolve(v.split(":", 1)[1])) if isinstance(v, str) and v.startswith("registry:") else v
        for k, v in raw.items()
    }


def policy_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: the trainable part for a policy with frozen pretrained parts
    (the latent policy: ControlNet or LoRA only), the whole state otherwise."""
    if hasattr(policy, "trainable_state_dict"):
        return policy.trainable_state_dict()
    return policy.state_dict()


__all__ = ["Policy", "POLICY_KINDS", "build_policy_from_dict", "policy_state_dict"]
