"""Published policies by name: ``--policy NAME`` is the shipped ``configs/policy-NAME.yaml``.

  sd21-diffbir      DiffBIR v1 face on SD 2.1-base (the LRPO paper's base policy)
  lrpo-fidelity     the LRPO release's ControlNet trained with the GT-guided term (the paper's model)
  lrpo-perception   the LRPO release's ControlNet trained without it

Each YAML names its model files as ``registry:NAME`` (``lrpo weights list``); the same names work in
``lrpo restore --policy``, ``lrpo demo --policy``, ``lrpo evaluate --method NAME=policy:NAME`` and as
``init_checkpoint=configs/policy-NAME.yaml`` of ``lrpo train``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SHIPPED_CONFIG_DIR, ConfigError

__all__ = ["published_policies", "published_policy_config"]


def published_policies() -> list[str]:
    """The names ``--policy`` accepts (one per shipped ``policy-*.yaml``), sorted."""
    return sorted(p.stem[len("policy-"):] for p in SHIPPED_CONFIG_DIR.glob("policy-*.yaml"))


def published_policy_config(name: str) -> Path:
    """The shipped policy YAML of ``name``; an unknown name is one line listing the known ones."""
    path = SHIPPED_CONFIG_DIR / f"policy-{name}.yaml"
    if "/" in name or "\\" in name or not path.is_file():
        raise ConfigError(f"--policy {name!r} is not known; known: {', '.join(published_policies())}")
    return path
