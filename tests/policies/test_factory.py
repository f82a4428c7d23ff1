"""Policies rebuild from config sections: a checkpoint or a policy YAML, pixel or latent kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from lrpo.checkpoint import save_checkpoint
from lrpo.config import ConfigError, DiffusionConfig, to_dict
from lrpo.inference.restorer import Restorer
from lrpo.policies.loading import load_policy
from lrpo.policies import build_policy_from_dict, policy_state_dict
from lrpo.policies.latent_config import LatentPolicyConfig


def tiny_latent_section() -> dict:
    raw = to_dict(LatentPolicyConfig.preset("tiny"))
    raw["random_init"] = True
    return raw


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="policy.kind 'gan'"):
        build_policy_from_dict({"kind": "gan"})


def test_latent_policy_from_yaml_restores(tmp_path):
    raw = tiny_latent_section()
    path = tmp_path / "policy-tiny.yaml"
    path.write_text(yaml.safe_dump({"policy": raw, "diffusion": to_dict(DiffusionConfig(sample_steps=2))}))
    policy, diffusion, src = load_policy(path)
    assert type(policy).__name__ == "LatentPolicy" and src == path
    restorer = Restorer.from_checkpoint(path, steps=2, eta=0.0, device="cpu")
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)]
    out = restorer.restore(faces, seeds=[0, 1])
    assert [o.shape for o in out] == [(40, 40, 3), (24, 24, 3)]


def test_latent_checkpoint_stores_only_trainable_weights(tmp_path):
    policy = build_policy_from_dict(tiny_latent_section())
    sd = policy_state_dict(policy)
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert len(sd) == sum(1 for _, p in policy.named_parameters() if id(p) in trainable)
    assert all(k.startswith("controlnet.") for k in sd)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01)
    cfg = {"policy": tiny_latent_section(), "diffusion": to_dict(DiffusionConfig(sample_steps=2))}
    save_checkpoint(tmp_path / "run", 1, policy_state_dict(policy), cfg, {}, kind="lrpo")
    reloaded, _, _ = load_policy(tmp_path / "run")
    for (k, a), b in zip(policy_state_dict(policy).items(), policy_state_dict(reloaded).values()):
        assert torch.equal(a, b), k
    # the frozen parts come from the config (random_init here), identical on both sides
    assert torch.equal(policy.unet.conv_in.weight, reloaded.unet.conv_in.weight)


def test_registry_paths_name_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    raw = tiny_latent_section()
    raw.update(random_init=False, sd_checkpoint="registry:sd21-base")
    from lrpo.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="v2-1_512-ema-pruned.ckpt"):
        build_policy_from_dict(raw)


def test_missing_diffusers_names_the_extra(monkeypatch):
    """Without diffusers the latent policy stops with the extra to install, not an ImportError trace."""
    import sys

    from lrpo.optional import MissingDependencyError
    from lrpo.policies import build_policy_from_dict

    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(MissingDependencyError, match=r'sd21_controlnet.*needs the Python package .diffusers.*pip install "lrpo\[sd\]"'):
        build_policy_from_dict({"kind": "sd21_controlnet", "random_init": True})
