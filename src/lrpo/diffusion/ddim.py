"""Stochastic DDIM sampling with per-step Gaussian log-probabilities (SPEC section 2).

Notation (Song et al. 2021, "DDIM", eq. 12 and 16):

    t, t_prev       current and next (less noisy) training timestep; t_prev = t - step_ratio
    a_t, a_p        alphas_cumprod[t], alphas_cumprod[t_prev]; at the last step t_prev < 0 and
                    a_p = alphas_cumprod[0] ("first", Stable Diffusion's set_alpha_to_one=False) or 1 ("one")
    x0_hat, eps     the network's clean-sample and noise estimates at x_t (schedules.predict_x0_eps)
    sigma_t         eta * sqrt((1 - a_p) / (1 - a_t)) * sqrt(1 - a_t / a_p)
    mean            sqrt(a_p) * x0_hat + sqrt(1 - a_p - sigma_t^2) * eps
    x_prev          mean + sigma_t * z,  z ~ N(0, I)
    log pi          mean (or sum) over the elements of one sample of log N(x_prev; mean, sigma_t^2)

Step j (0 .. S-1) runs from timesteps[j] to prev_timesteps[j]. Timesteps use Stable Diffusion's
"leading" spacing: step_ratio = T // S and timesteps = (S-1, ..., 1, 0) * step_ratio + steps_offset,
so T = 1000, S = 50, offset 1 gives 981, 961, ..., 21, 1.

Precision: coefficients are derived from the float64 schedule and cast once per (device, dtype);
the step itself runs in float32 even for bf16/fp16 inputs (float64 if an input is float64), because
log-densities of near-identical samples are differences of large numbers. The returned sample is cast
back to x_t's dtype, and its log-prob is evaluated at that cast value, so recomputing the log-prob of
a stored sample (PPO) reproduces the recorded one exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import torch
from torch import Tensor

from lrpo.config import DiffusionConfig
from lrpo.diffusion.schedules import (
    PREDICTIONS,
    Prediction,
    compute_dtype,
    make_alphas_cumprod,
    per_sample,
    x0_eps_from_coefficients,
)

GeneratorLike = Union[torch.Generator, Sequence[torch.Generator], None]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class StepOutput(NamedTuple):
    """Result of one DDIM step for a batch of B samples of shape [B, *shape].

    prev_sample: [B, *shape], x_t's dtype. The drawn (or given) x_{t_prev}.
    mean:        [B, *shape], float32 (float64 for float64 inputs). Mean of pi(x_{t_prev} | x_t).
    std:         [B, 1, ..., 1], same dtype as mean. sigma_t per sample (0 when eta = 0).
    log_prob:    [B] (reduce "mean"/"sum") or [B, *shape] ("none"), same dtype as mean.
                 log N(prev_sample; mean, std^2); exactly 0 where std = 0 (deterministic step).
    x0_pred:     [B, *shape], same dtype as mean. The network's clean-sample estimate (after clip_x0).
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor
    x0_pred: Tensor


# ----------------------------------------------------------------------------------------------
# pure maths
# ----------------------------------------------------------------------------------------------
def ddim_sigma(alpha_t: Tensor, alpha_prev: Tensor, eta: float) -> Tensor:
    """sigma_t = eta * sqrt((1 - a_p) / (1 - a_t)) * sqrt(1 - a_t / a_p), elementwise.

    alpha_t, alpha_prev: tensors of equal shape with 0 < a_t < a_p <= 1. Same dtype out.
    """
    return eta * torch.sqrt((1.0 - alpha_prev) / (1.0 - alpha_t)) * torch.sqrt(1.0 - alpha_t / alpha_prev)


def ddim_mean_std(
    x0: Tensor, eps: Tensor, alpha_t: Union[float, Tensor], alpha_prev: Union[float, Tensor], eta: float
) -> tuple[Tensor, Tensor]:
    """Mean and std of the DDIM transition x_t -> x_{t_prev}.

    x0, eps: [B, ...] clean-sample and noise estimates. alpha_t, alpha_prev: scalars or per-sample
    ([B] or [B, 1, ...]). Returns (mean [B, ...], std broadcastable to mean), float32 (float64 if an
    input is float64). Raises if eta is so large that 1 - a_p - sigma^2 < 0.
    """
    dtype = compute_dtype(x0, eps)
    a_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=x0.device)
    a_p = torch.as_tensor(alpha_prev, dtype=torch.float64, device=x0.device)
    sigma = ddim_sigma(a_t, a_p, eta)
    direction_var = 1.0 - a_p - sigma**2
    if direction_var.device.type == "cpu" and bool((direction_var < -1e-12).any()):
        raise ValueError(f"ddim_mean_std: eta={eta} makes sigma^2 exceed 1 - a_p; use eta <= 1")
    dir_coef = per_sample(direction_var.clamp(min=0.0).sqrt(), x0, dtype)
    mean = per_sample(a_p.sqrt(), x0, dtype) * x0.to(dtype) + dir_coef * eps.to(dtype)
    return mean, per_sample(sigma, x0, dtype)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Union[float, Tensor], reduce: str = "mean") -> Tensor:
    """log N(x; mean, std^2) per element, reduced over all non-batch elements of each sample.

    x, mean: [B, ...]; std: > 0, broadcastable to x (scalar or [B, 1, ..., 1]).
    reduce: "mean" -> [B] (SPEC's log pi), "sum" -> [B] (the true joint density), "none" -> [B, ...].
    Computed in float32 even for bf16/fp16 inputs (float64 if an input is float64).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    std_t = torch.as_tensor(std, device=x.device)
    dtype = compute_dtype(x, mean, std_t) if std_t.is_floating_point() else compute_dtype(x, mean)
    std_t = std_t.to(dtype)
    diff = x.to(dtype) - mean.to(dtype)
    log_density = -(diff**2) / (2.0 * std_t**2) - torch.log(std_t) - _LOG_SQRT_2PI
    if reduce == "none":
        return log_density
    flat = log_density.reshape(log_density.shape[0], -1)
    return flat.mean(dim=1) if reduce == "mean" else flat.sum(dim=1)


def sample_noise(
    shape: Sequence[int], generator: GeneratorLike, device: Union[str, torch.device], dtype: torch.dtype
) -> Tensor:
    """Standard normal noise [*shape] on ``device`` in ``dtype``.

    ``generator``: one torch.Generator for the whole batch, or a list of shape[0] generators, one per
    sample: sample i is then drawn from generator i alone, so it does not depend on its batch
    neighbours (group rollouts stay reproducible however they are batched). Noise is drawn in float32
    (float64 for float64) on the generator's device and then cast and moved, so a seed gives the same
    values whatever the target precision.
    """
    if generator is None:
        raise ValueError("sample_noise needs a torch.Generator or a list of them (no global randomness)")
    shape = tuple(shape)
    draw_dtype = torch.promote_types(dtype, torch.float32)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=draw_dtype)
        return noise.to(device=device, dtype=dtype)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per sample")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=draw_dtype) for g in generators]
    if len({r.device for r in rows}) > 1:
        rows = [r.to(device) for r in rows]
    # one transfer for the whole batch when the generators share a device (the usual CPU generators)
    return torch.stack(rows).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
class _Coefficients(NamedTuple):
    """Per-step coefficient tables [S] on one device/dtype."""

    sqrt_alpha_t: Tensor
    sqrt_one_minus_alpha_t: Tensor
    sqrt_alpha_prev: Tensor
    direction: Tensor  # sqrt(1 - a_p - sigma^2)
    sigma: Tensor


class DDIMSampler:
    """DDIM with SD "leading" timestep spacing, stochastic for eta > 0, with log-probabilities.

    Args:
        alphas_cumprod: [T] float tensor, strictly decreasing, values in (0, 1) (schedules.*).
        num_steps: S, number of sampling steps, 1 <= S <= T.
        eta: DDIM stochasticity, 0 (deterministic) .. 1 (DDPM-like). Values above 1 are accepted only
            while 1 - a_p - sigma^2 stays >= 0 at every step.
        steps_offset: added to every timestep (SD uses 1).
        final_alpha: a_p at the last step, where t_prev < 0: "first" = alphas_cumprod[0] (SD), "one" = 1.

    Attributes (CPU tensors, index j = step 0 .. S-1, noisiest first):
        timesteps [S] long, prev_timesteps [S] long (negative at the last step when offset < step_ratio),
        alpha_t [S] float64, alpha_prev [S] float64, sigmas [S] float64.
    """

    def __init__(
        self,
        alphas_cumprod: Tensor,
        num_steps: int,
        eta: float,
        steps_offset: int = 1,
        final_alpha: str = "first",
    ) -> None:
        ac = torch.as_tensor(alphas_cumprod)
        if ac.ndim != 1 or ac.shape[0] < 2 or not ac.is_floating_point():
            raise ValueError(f"alphas_cumprod must be a 1-D float tensor of length >= 2, got {ac.dtype} {tuple(ac.shape)}")
        ac = ac.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(ac).all()) or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod values must be finite and lie strictly inside (0, 1)")
        if not bool((ac[1:] < ac[:-1]).all()):
            first_bad = int(torch.nonzero(ac[1:] >= ac[:-1])[0]) + 1
            raise ValueError(f"alphas_cumprod must be strictly decreasing; index {first_bad} is not below index {first_bad - 1}")
        num_train = ac.shape[0]
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_train:
            raise ValueError(f"num_steps must be an integer in [1, {num_train}] (the schedule length), got {num_steps!r}")
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
        if final_alpha not in ("first", "one"):
            raise ValueError(f"final_alpha must be 'first' (alphas_cumprod[0]) or 'one' (1.0), got {final_alpha!r}")

        step_ratio = num_train // num_steps
        timesteps = torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * step_ratio + steps_offset
        if int(timesteps[0]) >= num_train:
            raise ValueError(
                f"steps_offset={steps_offset} with {num_steps} steps (step_ratio {step_ratio}) puts the first timestep "
                f"at {int(timesteps[0])}, outside the schedule of length {num_train}"
            )
        prev_timesteps = timesteps - step_ratio
        final_value = float(ac[0]) if final_alpha == "first" else 1.0
        # test the sign before indexing: a clamped index would turn every final step into the "first" case
        has_prev = prev_timesteps >= 0
        alpha_prev = torch.where(has_prev, ac[prev_timesteps.clamp(min=0)], torch.tensor(final_value, dtype=torch.float64))
        alpha_t = ac[timesteps]
        sigmas = ddim_sigma(alpha_t, alpha_prev, eta)
        direction_var = 1.0 - alpha_prev - sigmas**2
        if bool((direction_var < -1e-12).any()):
            j = int(torch.nonzero(direction_var < -1e-12)[0])
            raise ValueError(f"eta={eta} is too large: sigma^2 exceeds 1 - a_prev at step {j} (t={int(timesteps[j])})")

        self.alphas_cumprod = ac
        self.num_train_timesteps = num_train
        self.num_steps = num_steps
        self.eta = float(eta)
        self.steps_offset = steps_offset
        self.final_alpha = final_alpha
        self.step_ratio = step_ratio
        self.timesteps = timesteps
        self.prev_timesteps = prev_timesteps
        self.alpha_t = alpha_t
        self.alpha_prev = alpha_prev
        self.sigmas = sigmas
        self._tables64 = _Coefficients(
            sqrt_alpha_t=alpha_t.sqrt(),
            sqrt_one_minus_alpha_t=(1.0 - alpha_t).sqrt(),
            sqrt_alpha_prev=alpha_prev.sqrt(),
            direction=direction_var.clamp(min=0.0).sqrt(),
            sigma=sigmas,
        )
        self._cache: dict[tuple[torch.device, torch.dtype], _Coefficients] = {}

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: DiffusionConfig, eta: float | None = None, num_steps: int | None = None) -> "DDIMSampler":
        """Sampler for ``cfg``'s schedule; eta and num_steps default to cfg.eta and cfg.sample_steps."""
        return cls(
            make_alphas_cumprod(cfg),
            num_steps=cfg.sample_steps if num_steps is None else num_steps,
            eta=cfg.eta if eta is None else eta,
        )

    def with_eta(self, eta: float) -> "DDIMSampler":
        """The same schedule and timesteps with another eta (e.g. training eta 1.0 vs inference 0.8)."""
        return DDIMSampler(self.alphas_cumprod, self.num_steps, eta, self.steps_offset, self.final_alpha)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return (
            f"DDIMSampler(T={self.num_train_timesteps}, num_steps={self.num_steps}, eta={self.eta}, "
            f"steps_offset={self.steps_offset}, final_alpha={self.final_alpha!r}, "
            f"timesteps={int(self.timesteps[0])}..{int(self.timesteps[-1])})"
        )

    # -- internals -----------------------------------------------------------------------------
    def coefficients(self, device: torch.device, dtype: torch.dtype) -> _Coefficients:
        """Per-step tables [S] cast once to (device, dtype) and cached."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = _Coefficients(*(t.to(device=key[0], dtype=dtype) for t in self._tables64))
        return self._cache[key]

    def _index_tensor(self, index: Union[int, Tensor], batch: int, device: torch.device) -> Tensor:
        if isinstance(index, Tensor):
            if index.dtype in (torch.bool,) or index.is_floating_point() or index.is_complex():
                raise ValueError(f"step index tensor must be an integer (long) tensor, got {index.dtype}")
            if index.ndim == 0:
                index = index.expand(batch)
            if index.shape != (batch,):
                raise ValueError(f"step index tensor must have shape [B] = [{batch}], got {tuple(index.shape)}")
            # range checked on the CPU only: on an accelerator it would cost a host sync per step
            if index.device.type == "cpu" and (int(index.min()) < 0 or int(index.max()) >= self.num_steps):
                raise ValueError(f"step indices must lie in [0, {self.num_steps - 1}], got {index.tolist()}")
            return index.to(device=device, dtype=torch.long)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_steps:
            raise ValueError(f"step index must be an int in [0, {self.num_steps - 1}] or a LongTensor [B], got {index!r}")
        return torch.full((batch,), index, dtype=torch.long, device=device)

    # -- the step ------------------------------------------------------------------------------
    def step(
        self,
        model_output: Tensor,
        x_t: Tensor,
        index: Union[int, Tensor],
        *,
        prediction: Prediction = "eps",
        generator: GeneratorLike = None,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        reduce: str = "mean",
        clip_x0: float | None = None,
    ) -> StepOutput:
        """One DDIM step x_t -> x_{t_prev} for a batch; see StepOutput for what comes back.

        Args:
            model_output: [B, *shape] network output at (x_t, timesteps[index]) in ``prediction`` form.
            x_t: [B, *shape] current sample, any float dtype.
            index: step index j in [0, S) for the whole batch, or a LongTensor [B] of per-sample
                indices (a batch may mix steps).
            prediction: "eps", "v" or "x0".
            generator: torch.Generator or a list of B generators (per-sample draws, see sample_noise).
            noise: [B, *shape] standard normal noise to use instead of drawing.
            prev_sample: [B, *shape] evaluate the log-prob of this given sample; nothing is drawn
                (PPO recomputation and the GT-path likelihood).
            reduce: "mean" (SPEC's log pi), "sum" or "none" over each sample's elements.
            clip_x0: clamp x0_hat to [-clip_x0, clip_x0] (eps is not re-derived, as in diffusers'
                clip_sample); None (default) leaves x0_hat alone.

        For eta = 0 (or a step whose sigma is 0) the step is deterministic: prev_sample = mean and
        log_prob is filled with zeros, since a point mass has no finite density.
        When eta > 0 and neither ``noise`` nor ``prev_sample`` is given, ``generator`` is required.
        """
        if model_output.shape != x_t.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != x_t shape {tuple(x_t.shape)}")
        if x_t.ndim < 2:
            raise ValueError(f"x_t must be batched [B, ...] with at least 2 dims, got shape {tuple(x_t.shape)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if prev_sample is not None and (noise is not None or generator is not None):
            raise ValueError("pass prev_sample (evaluate a given sample) or noise/generator (draw one), not both")
        if noise is not None and generator is not None:
            raise ValueError("pass noise or generator, not both")
        for name, other in (("noise", noise), ("prev_sample", prev_sample)):
            if other is not None and other.shape != x_t.shape:
                raise ValueError(f"{name} shape {tuple(other.shape)} != x_t shape {tuple(x_t.shape)}")
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be > 0 or None, got {clip_x0}")

        batch = x_t.shape[0]
        dtype = compute_dtype(model_output, x_t)
        table = self.coefficients(x_t.device, dtype)
        idx = self._index_tensor(index, batch, x_t.device)
        view = (batch,) + (1,) * (x_t.ndim - 1)

        def gather(column: Tensor) -> Tensor:
            return column[idx].view(view)

        x0, eps = x0_eps_from_coefficients(
            model_output.to(dtype), x_t.to(dtype), gather(table.sqrt_alpha_t), gather(table.sqrt_one_minus_alpha_t), prediction
        )
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean = gather(table.sqrt_alpha_prev) * x0 + gather(table.direction) * eps
        std = gather(table.sigma)

        stochastic = self.eta > 0
        if prev_sample is None:
            if stochastic:
                if noise is None:
                    if generator is None:
                        raise ValueError("eta > 0: pass a generator (or a list of B) or explicit noise to draw x_prev")
                    noise = sample_noise(x_t.shape, generator, x_t.device, dtype)
                prev_sample = (mean + std * noise.to(dtype)).to(x_t.dtype)
            else:
                prev_sample = mean.to(x_t.dtype)

        if stochastic:
            positive = std > 0
            # a zero-std step (final_alpha="one") gets log-prob 0, not -inf/NaN from dividing by 0
            log_prob = gaussian_log_prob(prev_sample, mean, torch.where(positive, std, torch.ones_like(std)), reduce)
            mask = positive if reduce == "none" else positive.view(batch)
            log_prob = torch.where(mask, log_prob, torch.zeros_like(log_prob))
        else:
            log_prob = torch.zeros(mean.shape if reduce == "none" else (batch,), dtype=dtype, device=x_t.device)
        return StepOutput(prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob, x0_pred=x0)


__all__ = [
    "StepOutput",
    "DDIMSampler",
    "ddim_sigma",
    "ddim_mean_std",
    "gaussian_log_prob",
    "sample_noise",
    "GeneratorLike",
]
