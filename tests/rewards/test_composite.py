"""lrpo.rewards.composite: weight validation, the weighted sum and its details, specs and presets."""

from __future__ import annotations

import math

import pytest
import torch

from lrpo.rewards import PRESETS, BaseReward, CompositeReward, RewardInput, RewardOutput, available_rewards, build_composite, check_weights


class _Const(BaseReward):
    """Scores every sample with a fixed vector; reports one sub-detail."""

    def __init__(self, values, needs_gt=False, name="const"):
        super().__init__()
        self.values, self.needs_gt, self.name = torch.tensor(values), needs_gt, name

    def score(self, inp):
        return RewardOutput(self.values.clone(), {"neg": -self.values})


def _inp(b=2, gt=True):
    x = torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return RewardInput(x, gt=x.clone() if gt else None)


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights, reason",
    [
        ({"a": 0.5, "b": 0.4}, "they sum to 0.9"),
        ({"a": 1.2, "b": -0.2}, "invalid weights {'b': -0.2}"),
        ({"a": math.nan, "b": 1.0}, "invalid weights"),
        ({"a": math.inf}, "invalid weights"),
        ({}, "at least one term"),
    ],
)
def test_check_weights_rejects_and_names_them(weights, reason):
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("}", r"\}")) as e:
        check_weights(weights)
    for key in weights:
        assert f"{key}=" in str(e.value)


def test_check_weights_tolerates_rounding():
    check_weights({"a": 0.1, "b": 0.2, "c": 0.7})  # 0.1 + 0.2 = 0.30000000000000004
    check_weights({"a": 0.5, "b": 0.5 + 5e-7})
    with pytest.raises(ValueError):
        check_weights({"a": 0.5, "b": 0.5 + 2e-6})


# ---------------------------------------------------------------------------------------------
# weighted sum
# ---------------------------------------------------------------------------------------------
def test_composite_total_and_details():
    comp = CompositeReward({"a": (_Const([1.0, 0.0]), 0.25), "b": (_Const([0.2, 0.6], needs_gt=True), 0.75)})
    out = comp(_inp())
    # total = 0.25 * a + 0.75 * b = [0.25 + 0.15, 0 + 0.45] = [0.4, 0.45]
    torch.testing.assert_close(out.scores, torch.tensor([0.4, 0.45]))
    torch.testing.assert_close(out.details["total"], out.scores)
    torch.testing.assert_close(out.details["a"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.details["b/neg"], torch.tensor([-0.2, -0.6]))
    assert set(out.details) == {"a", "a/neg", "b", "b/neg", "total"}
    assert comp.needs_gt


def test_composite_needs_gt_only_if_a_term_does():
    comp = CompositeReward({"a": (_Const([1.0, 0.0]), 1.0)})
    assert not comp.needs_gt
    torch.testing.assert_close(comp(_inp(gt=False)).scores, torch.tensor([1.0, 0.0]))


def test_composite_rejects_non_finite_term_scores():
    comp = CompositeReward({"a": (_Const([1.0, math.nan]), 1.0)})
    with pytest.raises(RuntimeError, match="'a' returned non-finite"):
        comp(_inp())


def test_composite_rejects_reserved_names():
    with pytest.raises(ValueError, match="reserved"):
        CompositeReward({"total": (_Const([1.0]), 1.0)})


# ---------------------------------------------------------------------------------------------
# specs and presets
# ---------------------------------------------------------------------------------------------
def test_build_composite_from_spec_with_alias_and_kwargs():
    comp = build_composite({"ssim_y": {"reward": "ssim", "weight": 0.5, "channels": "y"}, "dwt": {"weight": 0.5}})
    assert comp.weights == {"ssim_y": 0.5, "dwt": 0.5}
    assert comp.components["ssim_y"][0].channels == "y"
    out = comp(_inp())
    # output == gt: SSIM = 1 and DWT fidelity = exp(0) = 1, so the total is 1
    torch.testing.assert_close(out.scores, torch.ones(2))


def test_build_composite_checks_weights_before_building():
    with pytest.raises(ValueError, match="sum to 0.8"):
        build_composite({"dwt": {"weight": 0.4}, "no_such_reward": {"weight": 0.4}})
    with pytest.raises(ValueError, match="must be a mapping with a 'weight'"):
        build_composite({"dwt": {}})


def test_build_composite_passes_common_kwargs_only_where_accepted():
    comp = build_composite({"dwt": {"weight": 0.5}, "brightness": {"weight": 0.5}}, device="cpu", levels=2)
    assert comp.components["dwt"][0].levels == 2  # brightness has no `levels` and is built anyway


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    check_weights({k: v["weight"] for k, v in PRESETS[name].items()})
    for key, term in PRESETS[name].items():
        assert term.get("reward", key) in available_rewards()


def test_paper_preset_matches_spec():
    # SPEC section 4: 0.3 S_face + 0.3 (1 - LPIPS) + 0.1 CLIPIQA + 0.3 exp(-15 L_dwt)
    assert {k: v["weight"] for k, v in PRESETS["paper"].items()} == {"face_reward": 0.3, "lpips": 0.3, "clipiqa": 0.1, "dwt": 0.3}


def test_no_weights_preset_runs_and_prefers_the_clean_image():
    comp = build_composite("no_weights")
    gt = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noisy = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    clean_score = comp(RewardInput(gt, gt=gt)).scores
    noisy_score = comp(RewardInput(noisy, gt=gt)).scores
    assert (clean_score > noisy_score).all()
    with pytest.raises(ValueError, match="unknown reward preset 'nope'"):
        build_composite("nope")
