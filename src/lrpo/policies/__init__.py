"""Policies: the protocol, the CPU pixel policy and the SD2.1 + ControlNet latent policy.

``build_policy_from_dict`` dispatches on the ``kind`` of a config's ``policy`` section, so a
checkpoint or a policy YAML rebuilds whichever policy it describes.

A checkpoint's policy section is data from a folder someone may have handed over: settings that
would let a loader run code from a model file (:data:`CODE_SWITCHES`, full unpickling) are taken only
from the user (``trusted_policy_section``), never from the checkpoint. Paths in it (``sd_checkpoint``
and the like) may point anywhere: such files are read as tensors only (safetensors or
``weights_only`` torch files), so they can fail to load but cannot run code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .. import weights
from ..config import ConfigError, PolicyConfig, from_dict
from ..optional import require
from .base import Policy
from .latent import LatentPolicy
from .latent_config import LatentPolicyConfig
from .pixel_unet import build_policy

POLICY_KINDS = ("pixel_unet", "sd21_controlnet")
# policy settings under which a loader may run code held in a model file (full unpickling)
CODE_SWITCHES = ("trust_pickle",)


def trusted_policy_section(raw: Any, source: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """``raw``, a policy section read from the checkpoint config ``source``, with :data:`CODE_SWITCHES`
    off unless the user turned them on (``trust_pickle``: the user's own command line or config).
    A switch the file turns on is ignored with a one-line warning naming the file."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: its 'policy' section is a {type(raw).__name__}, not a mapping of settings")
    out = dict(raw)
    for key in CODE_SWITCHES:
        if out.get(key) not in (None, False) and not trust_pickle:
            print(f"lrpo: warning: {source} sets policy.{key}: {out[key]!r}; ignored (a checkpoint cannot turn on "
                  f"loading code from model files; only your own command line or config can)", file=sys.stderr)
        if key in out or out.get("kind") == "sd21_controlnet":  # (the pixel policy reads no model files)
            out[key] = bool(trust_pickle)
    return out


def build_policy_from_dict(raw: dict[str, Any], device: torch.device | str = "cpu", load_files: bool = True):
    """Policy from a ``policy`` config section. The latent policy loads the model files its
    config names (SD 2.1, ControlNet, SwinIR) unless ``load_files`` is False (random weights)."""
    kind = raw.get("kind", "pixel_unet")
    if kind == "pixel_unet":
        return build_policy(from_dict(PolicyConfig, raw, prefix="policy")).to(device)
    if kind == "sd21_controlnet":
        require("diffusers", "the SD 2.1 + ControlNet policy (policy.kind: sd21_controlnet)")
        cfg = from_dict(LatentPolicyConfig, _resolve_registry_paths(raw), prefix="policy")
        if not load_files:
            cfg.random_init = True
        return LatentPolicy.from_config(cfg, device)
    raise ConfigError(f"policy.kind {kind!r} is not known; expected one of {list(POLICY_KINDS)}")


def _resolve_registry_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """``"registry:NAME"`` values become the local path of registry file NAME (lrpo weights)."""
    return {
        k: str(weights.resolve(v.split(":", 1)[1])) if isinstance(v, str) and v.startswith("registry:") else v
        for k, v in raw.items()
    }


def policy_state_dict(policy: Policy) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: the trainable part for a policy with frozen pretrained parts
    (the latent policy: ControlNet or LoRA only), the whole state otherwise."""
    return policy.trainable_state_dict()


__all__ = ["CODE_SWITCHES", "Policy", "POLICY_KINDS", "build_policy_from_dict", "policy_state_dict", "trusted_policy_section"]
