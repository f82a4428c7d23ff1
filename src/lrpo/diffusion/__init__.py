"""Diffusion core: noise schedules, the stochastic DDIM step with log-probabilities, rollouts."""

from lrpo.diffusion.ddim import (
    DDIMSampler,
    GeneratorLike,
    StepOutput,
    ddim_mean_std,
    ddim_sigma,
    gaussian_log_prob,
    sample_noise,
)
from lrpo.diffusion.rollout import ModelFn, Trajectory, initial_noise, rollout
from lrpo.diffusion.schedules import (
    PREDICTIONS,
    Prediction,
    add_noise,
    alphas_cumprod,
    cosine_betas,
    make_alphas_cumprod,
    predict_x0_eps,
    sd_linear_betas,
    training_target,
)

__all__ = [
    "DDIMSampler",
    "GeneratorLike",
    "StepOutput",
    "ddim_mean_std",
    "ddim_sigma",
    "gaussian_log_prob",
    "sample_noise",
    "ModelFn",
    "Trajectory",
    "initial_noise",
    "rollout",
    "PREDICTIONS",
    "Prediction",
    "add_noise",
    "alphas_cumprod",
    "cosine_betas",
    "make_alphas_cumprod",
    "predict_x0_eps",
    "sd_linear_betas",
    "training_target",
]
