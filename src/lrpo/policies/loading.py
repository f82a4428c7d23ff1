"""Rebuild a policy from a checkpoint folder or a policy YAML (``lrpo restore``, ``lrpo train``'s
``init_checkpoint``, the demo): the one way a saved policy comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from .. import checkpoint as ckpt_io
from ..config import DiffusionConfig, from_dict
from ..precision import resolve_precision
from . import Policy, build_policy_from_dict, trusted_policy_section


def load_policy(source: str | Path, device: torch.device | str = "cpu", ema: bool = True, *,
                trust_pickle: bool = False, precision: str | None = None) -> tuple[Policy, DiffusionConfig, Path]:
    """Rebuild a policy and its diffusion schedule.

    ``source`` is a checkpoint (or run) folder, whose ``config.yaml`` rebuilds the model and whose
    (EMA) weights are loaded, or a policy YAML (``configs/policy-*.yaml``: ``policy`` and
    ``diffusion`` sections) describing a published model, e.g. DiffBIR v1 face on SD 2.1.
    A policy YAML is the user's own config and is obeyed as written; a checkpoint's policy section
    is data and cannot turn on full unpickling of model files: only ``trust_pickle`` (the user's
    command line or run config) can (:func:`lrpo.policies.trusted_policy_section`).
    ``precision`` (auto|fp32|bf16; None: the file's): the latent policy's ``policy.precision``, set
    before it is built, since it stores its frozen weights and runs every forward in it.
    """
    source = Path(source)
    if source.is_file() and source.suffix in (".yaml", ".yml"):
        raw = _read_policy_yaml(source)
        section = raw["policy"]
        if trust_pickle and isinstance(section, dict) and section.get("kind") == "sd21_controlnet":
            section = {**section, "trust_pickle": True}
        policy = build_policy_from_dict(_with_precision(section, precision, device), device)
        diffusion = from_dict(DiffusionConfig, raw.get("diffusion") or {}, prefix="diffusion")
        return policy.eval(), diffusion, source
    ckpt = ckpt_io.find_checkpoint(source)
    raw = ckpt_io.load_config_dict(ckpt)
    if not isinstance(raw, dict) or "policy" not in raw or "diffusion" not in raw:
        raise ckpt_io.CheckpointError(f"{ckpt}/config.yaml has no 'policy' and 'diffusion' sections")
    section = trusted_policy_section(raw["policy"], ckpt / "config.yaml", trust_pickle=trust_pickle)
    policy = build_policy_from_dict(_with_precision(section, precision, device), "cpu")
    diffusion = from_dict(DiffusionConfig, raw["diffusion"], prefix="diffusion")
    use_ema = ema and (ckpt / "ema.safetensors").is_file()
    ckpt_io.load_weights(policy, ckpt, ema=use_ema)
    return policy.to(device).eval(), diffusion, ckpt


def _with_precision(section: Any, precision: str | None, device: torch.device | str) -> Any:
    """A latent policy section with the user's precision (``auto`` resolved for ``device``)."""
    if precision is None or not isinstance(section, dict) or section.get("kind") != "sd21_controlnet":
        return section
    return {**section, "precision": resolve_precision(precision, device)}


def _read_policy_yaml(source: Path) -> dict:
    """A policy YAML's sections; anything else (a ``!!python`` tag, bad YAML, no 'policy' mapping) is one line."""
    try:
        raw = yaml.safe_load(source.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        why = str(getattr(e, "problem", None) or e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ckpt_io.CheckpointError(f"{source}: not a policy YAML lrpo can read{where}: {why} (plain YAML only: "
                                      f"tags such as !!python are refused)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("policy"), dict):
        raise ckpt_io.CheckpointError(f"{source}: a policy YAML needs a 'policy' section (a mapping of settings)")
    return raw
