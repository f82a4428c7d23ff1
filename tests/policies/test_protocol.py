"""Both policy kinds carry every member of the Policy protocol, so callers (the Restorer, the demo)
use them without probing what kind of policy they hold."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

from lrpo.config import DiffusionConfig, PolicyConfig
from lrpo.diffusion.ddim import DDIMSampler
from lrpo.inference import restorer
from lrpo.policies.base import Policy
from lrpo.policies.latent import LatentPolicy
from lrpo.policies.latent_config import LatentPolicyConfig
from lrpo.policies.pixel_unet import PixelPolicy
from lrpo.policies.sampling import restore_images

# every public member the protocol declares (methods, the resolution property, annotated attributes)
MEMBERS = sorted({n for n in vars(Policy) if not n.startswith("_")} | set(Policy.__annotations__) | {"__call__"})


@pytest.fixture(scope="module")
def policies():
    torch.manual_seed(0)
    pixel = PixelPolicy(PolicyConfig(resolution=16, base_channels=8)).eval()
    latent = LatentPolicy.from_config(LatentPolicyConfig.preset("tiny", random_init=True))
    return {"pixel": pixel, "latent": latent}


def test_protocol_names_what_restoring_callers_use():
    assert {"resolution", "resize_antialias", "compilable", "restore_faces"} <= set(MEMBERS)


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_each_policy_kind_has_every_protocol_member(policies, kind):
    policy = policies[kind]
    assert isinstance(policy, Policy)
    missing = [n for n in MEMBERS if not hasattr(policy, n)]
    assert missing == []
    assert policy.resolution == policy.cfg.resolution and type(policy.resolution) is int
    assert policy.resize_antialias in (None, True) and isinstance(policy.compilable, bool)


def test_the_members_say_which_resize_and_sampling_each_kind_takes(policies):
    # pixel: torch's bicubic, antialiased when shrinking, compiled forwards allowed; latent: DiffBIR's
    # resize (antialiased both ways) and its own sampling code
    assert (policies["pixel"].resize_antialias, policies["pixel"].compilable) == (None, True)
    assert (policies["latent"].resize_antialias, policies["latent"].compilable) == (True, False)


def test_pixel_restore_faces_is_restore_images(policies):
    policy = policies["pixel"]
    sampler = DDIMSampler.from_config(DiffusionConfig(), eta=0.5, num_steps=2)
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy.restore_faces(sampler, lq, [3, 4]), restore_images(policy, sampler, lq, [3, 4]))


def test_latent_restore_faces_refuses_a_compiled_forward(policies):
    sampler = DDIMSampler.from_config(DiffusionConfig(), num_steps=1)
    with pytest.raises(ValueError, match="no compiled forward"):
        policies["latent"].restore_faces(sampler, torch.rand(1, 3, 16, 16), [0], forward=lambda x, t, c: x)


def test_restorer_does_not_probe_its_policy():
    tree = ast.parse(Path(inspect.getsourcefile(restorer)).read_text())
    probes = [n.lineno for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")]
    assert probes == []
    assert ".cfg." not in inspect.getsource(restorer.Restorer)  # the resolution comes from the protocol
