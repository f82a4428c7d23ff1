"""Reinforcement-learning maths of LRPO: group advantages, noise-level weights and the losses."""

from lrpo.rl.advantages import AdvantageResult, group_advantages, noise_level_weights, step_advantages
from lrpo.rl.losses import (
    PPOStats,
    gt_likelihood_regularizer,
    gt_path,
    kl_to_reference,
    num_train_steps,
    ppo_clip_loss,
    regularizer_step_mask,
)

__all__ = [
    "AdvantageResult",
    "group_advantages",
    "noise_level_weights",
    "step_advantages",
    "PPOStats",
    "ppo_clip_loss",
    "gt_likelihood_regularizer",
    "gt_path",
    "regularizer_step_mask",
    "num_train_steps",
    "kl_to_reference",
]
