"""LPIPS: exact file layouts, strict loading, and the formula checked by hand.

The published files cannot be downloaded here, so tiny stand-ins in their exact layouts and
containers (lrpo.standins: torchvision's vgg16 state dict; the lpips package's weights/v0.1/vgg.pth)
are written and loaded back; the loader takes the conv widths from the VGG file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lrpo.rewards.base import MissingGroundTruthError, RewardInput
from lrpo.model_files import StateDictMismatchError, read_state_dict
from lrpo.rewards.lpips import (
    LPIPS,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    LPIPSReward,
    VGG16Features,
    lpips_from_features,
    normalize_channels,
)
from lrpo.standins import write_standin
from lrpo.weights import MissingWeightsError, resolve, verify

# torchvision vgg16().features: conv index -> (out, in) channels (3x3 kernels)
TORCHVISION_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    # tiny stand-ins of both files in their published containers (legacy torch.save; the heads'
    # storages tagged cuda:0 as in lpips' vgg.pth): the loader takes the widths from the VGG file
    folder = tmp_path_factory.mktemp("lpips")
    write_standin("vgg16-imagenet", folder, "tiny")
    write_standin("lpips-vgg-v0.1", folder, "tiny")
    return folder, read_state_dict(folder / "vgg16-397923af.pth"), read_state_dict(folder / "vgg.pth")


@pytest.fixture(scope="module")
def model(files):
    folder, _, _ = files
    return LPIPS.from_files(folder / "vgg16-397923af.pth", folder / "vgg.pth")


def test_vgg_module_has_torchvision_key_layout():
    sd = VGG16Features().state_dict()
    expected = {f"features.{i}.{p}" for i in TORCHVISION_CONVS for p in ("weight", "bias")}
    assert set(sd) == expected
    for i, (out, inp) in TORCHVISION_CONVS.items():
        assert tuple(sd[f"features.{i}.weight"].shape) == (out, inp, 3, 3)


def test_from_files_loads_every_tensor_and_freezes(files, model):
    _, vgg_sd, lin_sd = files
    sd = model.state_dict()
    for k, v in vgg_sd.items():
        if k.startswith("features."):
            assert torch.equal(sd["net." + k], v), k
    for k, v in lin_sd.items():
        assert torch.equal(sd[k], v), k
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_renamed_key_is_a_clear_error(files, tmp_path):
    folder, vgg_sd, _ = files
    bad = dict(vgg_sd)
    bad["features.0.kernel"] = bad.pop("features.0.weight")
    torch.save(bad, tmp_path / "vgg.pth")
    with pytest.raises(StateDictMismatchError) as err:
        LPIPS.from_files(tmp_path / "vgg.pth", folder / "vgg.pth")
    msg = str(err.value)
    assert "missing keys (1): features.0.weight" in msg and "unexpected keys (1): features.0.kernel" in msg
    assert str(tmp_path / "vgg.pth") in msg


def test_wrong_shape_and_extra_head_are_errors(files, tmp_path):
    folder, _, lin_sd = files
    wrong = dict(lin_sd, **{"lin2.model.1.weight": torch.ones(1, 128, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(StateDictMismatchError, match=r"lin2.model.1.weight: file \(1, 128, 1, 1\) vs model \(1, 32, 1, 1\)"):
        LPIPS.from_files(folder / "vgg16-397923af.pth", tmp_path / "wrong.pth")
    extra = dict(lin_sd, **{"lin5.model.1.weight": torch.ones(1, 512, 1, 1)})  # squeeze-net heads
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(StateDictMismatchError, match="unexpected keys"):
        LPIPS.from_files(folder / "vgg16-397923af.pth", tmp_path / "extra.pth")


def test_scaling_constants_are_imagenet_statistics_on_minus_one_one():
    # (x01 - mean) / std with x01 = (x + 1) / 2 equals (x - (2 mean - 1)) / (2 std).
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for m, s, shift, scale in zip(mean, std, LPIPS_SHIFT, LPIPS_SCALE):
        assert shift == pytest.approx(2 * m - 1, abs=1e-12)
        assert scale == pytest.approx(2 * s, abs=1e-12)


def test_normalize_channels_by_hand():
    # The vector (3, 4) has norm 5, so it becomes (0.6, 0.8).
    f = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(normalize_channels(f).flatten(), torch.tensor([0.6, 0.8]), atol=1e-7)


def test_lpips_formula_by_hand():
    # One layer, C = 2, a 1x2 image. Pixel 1: f0 = (3, 4) -> (0.6, 0.8), f1 = (4, 3) -> (0.8, 0.6);
    # squared differences (0.04, 0.04). Pixel 2: equal features, differences 0.
    # Weights w = (1, 2): pixel 1 gives 0.04 * 1 + 0.04 * 2 = 0.12, pixel 2 gives 0; mean = 0.06.
    # A second layer, C = 1, 1x1: f0 = 2 -> 1, f1 = -5 -> -1, difference^2 = 4, weight 0.5 -> 2.
    # LPIPS = 0.06 + 2 = 2.06.
    f0 = [torch.tensor([[3.0, 1.0], [4.0, 1.0]]).view(1, 2, 1, 2), torch.tensor([2.0]).view(1, 1, 1, 1)]
    f1 = [torch.tensor([[4.0, 1.0], [3.0, 1.0]]).view(1, 2, 1, 2), torch.tensor([-5.0]).view(1, 1, 1, 1)]
    w = [torch.tensor([1.0, 2.0]), torch.tensor([0.5]).view(1, 1, 1, 1)]
    assert lpips_from_features(f0, f1, w).item() == pytest.approx(2.06, abs=1e-6)


def test_forward_is_the_formula_on_scaled_vgg_features(model):
    gen = torch.Generator().manual_seed(1)
    x0, x1 = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    shift, scale = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = lpips_from_features(model.net((x0 - shift) / scale), model.net((x1 - shift) / scale), model.lin_weights)
        got = model(x0, x1)
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_identity_symmetry_and_batch_independence(model):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(a, a), torch.zeros(3))
        d_ab, d_ba = model(a, b), model(b, a)
        singles = torch.cat([model(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    assert (d_ab > 0).all()  # non-negative heads and different images
    # Same arithmetic on the same numbers; only the order of samples in the batch differs.
    assert torch.allclose(d_ab, d_ba, rtol=1e-6, atol=0)
    assert torch.allclose(d_ab, singles, rtol=1e-5, atol=0)


def test_reward_is_one_minus_lpips_on_minus_one_one(model):
    gen = torch.Generator().manual_seed(3)
    x, gt = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)
    reward = LPIPSReward(model)
    out = reward(RewardInput(x, gt))
    with torch.no_grad():
        dist = model(2 * x - 1, 2 * gt - 1)
    assert torch.allclose(out.details["lpips"], dist, rtol=1e-6)
    assert torch.allclose(out.scores, 1 - dist, rtol=1e-6)
    assert torch.equal(reward(RewardInput(gt, gt)).scores, torch.ones(2))
    with pytest.raises(MissingGroundTruthError):
        reward(RewardInput(x))
    with pytest.raises(ValueError, match="bf16"):
        LPIPSReward(model, precision="bf16")  # CPU


def _real_lin_file() -> Path | None:
    try:
        path = resolve("lpips-vgg-v0.1")
        if verify("lpips-vgg-v0.1").status == "ok":  # not a stand-in
            return path
    except MissingWeightsError:
        pass
    spec = importlib.util.find_spec("lpips")  # the PyPI package ships the file; not imported
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / "weights" / "v0.1" / "vgg.pth"
        if p.is_file():
            return p
    return None


def test_published_linear_heads_load_strictly():
    path = _real_lin_file()
    if path is None:
        pytest.skip("the published lpips weights/v0.1/vgg.pth not found (registry folders, an installed lpips package; stand-ins do not count)")
    from lrpo.model_files import load_state_dict_strict, read_state_dict

    m = LPIPS()
    load_state_dict_strict(m.heads(), read_state_dict(path), source=str(path))
    assert all((w >= 0).all() for w in m.lin_weights)


def test_registry_factory_builds_the_same_reward(files, model):
    from lrpo.rewards import build_reward

    folder, _, _ = files
    reward = build_reward("lpips", vgg_path=folder / "vgg16-397923af.pth", lin_path=folder / "vgg.pth")
    gen = torch.Generator().manual_seed(4)
    x, gt = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)
    assert isinstance(reward, LPIPSReward)
    assert torch.equal(reward(RewardInput(x, gt)).scores, LPIPSReward(model)(RewardInput(x, gt)).scores)


def test_bf16_autocast_runs_and_stays_close(model):
    # CPU autocast follows the CUDA casting rules for convs; LPIPS normalises in float32 anyway.
    # bf16 keeps 8 mantissa bits (relative error ~0.4 % per operation), hence the 5 % tolerance.
    gen = torch.Generator().manual_seed(5)
    x0, x1 = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        ref = model(x0, x1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x0, x1)
    assert low.dtype == torch.float32
    assert torch.allclose(low, ref, rtol=0.05)
