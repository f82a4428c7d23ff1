"""lrpo.rewards.base and .registry: input validation, GT errors, device plumbing, name lookup."""

from __future__ import annotations

import pytest
import torch

from lrpo.rewards import (
    BaseReward,
    MissingGroundTruthError,
    Reward,
    RewardInput,
    RewardOutput,
    UnknownRewardError,
    available_rewards,
    build_reward,
    register_reward,
)
from lrpo.rewards import registry


def _images(b: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


class _MeanGT(BaseReward):
    """Test reward: mean of gt - images, records what it saw."""

    name, needs_gt = "mean_gt", True

    def score(self, inp: RewardInput) -> RewardOutput:
        self.seen = (inp.images.dtype, inp.images.device, torch.is_grad_enabled())
        return RewardOutput((inp.gt - inp.images).flatten(1).mean(1), {"twice": 2 * inp.images.flatten(1).mean(1)})


# ---------------------------------------------------------------------------------------------
# RewardInput / RewardOutput
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": torch.rand(2, 1, 8, 8)}, r"\[B, 3, H, W\]"),
        ({"images": torch.rand(3, 8, 8)}, r"\[B, 3, H, W\]"),
        ({"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, "float"),
        ({"images": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 8, 9)}, "gt must have the shape"),
        ({"images": torch.rand(2, 3, 8, 8), "lq": torch.rand(3, 3, 4, 4)}, "lq must be"),
        ({"images": torch.rand(2, 3, 8, 8), "meta": [{}]}, "meta must hold 0 or B=2"),
    ],
)
def test_reward_input_rejects_bad_shapes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardInput(**kwargs)


def test_require_gt_names_the_reward():
    inp = RewardInput(_images())
    with pytest.raises(MissingGroundTruthError, match="'mean_gt'.*gt is None"):
        _MeanGT()(inp)


def test_meta_value_handles_missing_meta_and_keys():
    inp = RewardInput(_images(), meta=[{"name": "a"}, {}])
    assert inp.meta_value(0, "name") == "a"
    assert inp.meta_value(1, "name") is None
    assert RewardInput(_images()).meta_value(0, "name") is None


def test_reward_output_checks_detail_shapes():
    with pytest.raises(ValueError, match="details\\['x'\\]"):
        RewardOutput(torch.zeros(3), {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"scores must be \[B\]"):
        RewardOutput(torch.zeros(3, 1))


# ---------------------------------------------------------------------------------------------
# BaseReward plumbing
# ---------------------------------------------------------------------------------------------
def test_base_reward_runs_in_float32_without_grad_and_returns_on_input_device():
    images = _images().double().requires_grad_(True)
    gt = torch.ones_like(images)
    reward = _MeanGT()
    out = reward(RewardInput(images, gt=gt))
    assert reward.seen == (torch.float32, torch.device("cpu"), False)
    assert out.scores.dtype == torch.float32 and out.scores.device == images.device
    assert not out.scores.requires_grad
    # mean(1 - x) per sample, computed here independently
    torch.testing.assert_close(out.scores, (1 - images.detach().float()).flatten(1).mean(1))
    assert set(out.details) == {"twice"}


def test_base_reward_rejects_wrong_batch_size():
    class Bad(BaseReward):
        name = "bad"

        def score(self, inp):
            return RewardOutput(torch.zeros(inp.batch_size + 1))

    with pytest.raises(RuntimeError, match="'bad' returned scores of shape \\(3,\\) for a batch of 2"):
        Bad()(RewardInput(_images()))


def test_base_reward_satisfies_protocol():
    assert isinstance(_MeanGT(), Reward)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_builtin_names_are_available_before_import():
    names = available_rewards()
    for name in ["dwt", "dwt_haar", "identity", "ssim", "ms_ssim", "sharpness", "brightness", "lpips", "clipiqa", "face_reward"]:
        assert name in names


def test_unknown_reward_lists_known_names():
    with pytest.raises(UnknownRewardError, match="unknown reward 'nope'; known rewards: .*dwt.*ssim"):
        build_reward("nope")


def test_register_and_build_a_custom_reward(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    register_reward("mean_gt_test", _MeanGT)
    assert "mean_gt_test" in available_rewards()
    assert isinstance(build_reward("mean_gt_test"), _MeanGT)
    # same factory again: fine (module re-import); a different one under the same name: refused
    register_reward("mean_gt_test", _MeanGT)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("mean_gt_test", lambda: None)


def test_bad_factory_arguments_name_the_reward():
    with pytest.raises(TypeError, match="reward 'ssim': bad arguments \\['colour'\\]"):
        build_reward("ssim", colour="rgb")


def test_lazy_module_that_does_not_exist_gives_clear_error(monkeypatch):
    monkeypatch.setitem(registry._LAZY_MODULES, "ghost", "lrpo.rewards.does_not_exist")
    with pytest.raises(UnknownRewardError, match="'ghost' lives in lrpo.rewards.does_not_exist, which is not available"):
        build_reward("ghost")
