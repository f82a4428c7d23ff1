"""Rewards: the protocol, the registry, the weighted composite and the built-in terms.

    from lrpo.rewards import RewardInput, build_composite
    reward = build_composite("offline")            # or {"dwt": {"weight": 0.3}, ...}
    out = reward(RewardInput(images, gt=gt, meta=[{"name": n} for n in names]))
    out.scores        # [B] total; out.details["dwt"], out.details["identity"], ...

Terms register themselves by name (see :func:`available_rewards`); those that load model files
(identity, lpips, clipiqa, face_reward) are imported only when built.
"""

from .base import BaseReward, MissingGroundTruthError, Reward, RewardInput, RewardOutput
from .composite import PRESETS, CompositeReward, build_composite, check_weights
from .registry import UnknownRewardError, available_rewards, build_reward, register_reward, reward_factory
from .simple import BrightnessReward, MSSSIMReward, PSNRReward, SharpnessReward, SSIMReward, ms_ssim, psnr, ssim
from .wavelet import DWTReward, dtcwt_lowpass, dwt_fidelity, lowpass_haar

__all__ = [
    "BaseReward",
    "BrightnessReward",
    "CompositeReward",
    "DWTReward",
    "MSSSIMReward",
    "MissingGroundTruthError",
    "PRESETS",
    "PSNRReward",
    "Reward",
    "RewardInput",
    "RewardOutput",
    "SSIMReward",
    "SharpnessReward",
    "UnknownRewardError",
    "available_rewards",
    "build_composite",
    "build_reward",
    "check_weights",
    "dtcwt_lowpass",
    "dwt_fidelity",
    "lowpass_haar",
    "ms_ssim",
    "psnr",
    "register_reward",
    "reward_factory",
    "ssim",
]
