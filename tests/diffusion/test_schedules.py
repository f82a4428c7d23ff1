"""Noise schedules and prediction conversions (lrpo.diffusion.schedules)."""

from __future__ import annotations

import math

import pytest
import torch

from lrpo.config import DiffusionConfig
from lrpo.diffusion.schedules import (
    add_noise,
    alphas_cumprod,
    cosine_betas,
    make_alphas_cumprod,
    per_sample,
    predict_x0_eps,
    sd_linear_betas,
    training_target,
)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def test_sd_linear_betas_endpoints_and_midpoint():
    betas = sd_linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    # linspace hits its ends exactly, so beta_0 = start and beta_999 = end up to float64 rounding of sqrt^2
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-14)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-14)
    assert bool((betas[1:] > betas[:-1]).all())
    # n = 3: the middle beta is the square of the mean of the square roots:
    # sqrt(0.00085) = 0.0291547595, sqrt(0.012) = 0.1095445115, mean 0.0693496355, squared 0.00480937192
    assert sd_linear_betas(3)[1].item() == pytest.approx(0.00480937192, rel=1e-8)


def test_alphas_cumprod_sd_values():
    ac = alphas_cumprod(sd_linear_betas())
    # a_0 = 1 - beta_0
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-15)
    # a_1 = a_0 * (1 - beta_1), beta_1 = (sqrt(.00085) + (sqrt(.012) - sqrt(.00085)) / 999) ** 2
    beta_1 = (math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
    assert ac[1].item() == pytest.approx((1 - 0.00085) * (1 - beta_1), rel=1e-14)
    # SD's well-known final signal level a_999 = 0.0046601 (= 1 / (1 + 213.6) in SNR terms)
    assert ac[-1].item() == pytest.approx(0.00466010, abs=5e-8)
    assert bool((ac[1:] < ac[:-1]).all())


def test_sd_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ours = alphas_cumprod(sd_linear_betas())
    # diffusers works in float32 (its cumprod of 1000 factors may drift by up to ~1000 * 6e-8
    # relative); measured 1e-6, so 5e-6 still catches any wrong constant or exponent
    torch.testing.assert_close(ours.float(), ref, rtol=5e-6, atol=0)


def test_cosine_betas_telescoping_product():
    T, s = 1000, 0.008
    betas = cosine_betas(T, s=s)
    assert betas.dtype == torch.float64 and betas.shape == (T,)

    def a_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    # beta_0 = 1 - a_bar(1/T) / a_bar(0)
    assert betas[0].item() == pytest.approx(1 - a_bar(1 / T) / a_bar(0), rel=1e-12)
    # a_bar(1) = cos(pi/2)^2 = 0, so the last beta is capped at max_beta
    assert betas[-1].item() == 0.999
    ac = alphas_cumprod(betas)
    # before the cap, the product telescopes: a_t = a_bar((t+1)/T) / a_bar(0)
    for t in (0, 100, 500, 900):
        assert ac[t].item() == pytest.approx(a_bar((t + 1) / T) / a_bar(0), rel=1e-10)


def test_make_alphas_cumprod_follows_config():
    cfg = DiffusionConfig(schedule="sd_linear", train_timesteps=200, beta_start=0.001, beta_end=0.02)
    torch.testing.assert_close(make_alphas_cumprod(cfg), alphas_cumprod(sd_linear_betas(200, 0.001, 0.02)), rtol=0, atol=0)
    cfg = DiffusionConfig(schedule="cosine", train_timesteps=300)
    torch.testing.assert_close(make_alphas_cumprod(cfg), alphas_cumprod(cosine_betas(300)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sd_linear_betas(1), "num_timesteps"),
        (lambda: sd_linear_betas(10, 0.02, 0.01), "beta_start < beta_end"),
        (lambda: cosine_betas(10, max_beta=1.0), "max_beta"),
        (lambda: alphas_cumprod(torch.tensor([0.1, 1.0])), r"\(0, 1\)"),
        (lambda: alphas_cumprod(torch.ones(2, 2) * 0.1), "1-D"),
    ],
)
def test_schedule_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# prediction parameterisations
# ---------------------------------------------------------------------------------------------
def test_v_by_hand():
    # a = 0.25: sqrt(a) = 0.5, sqrt(1 - a) = sqrt(0.75) = 0.8660254
    x0 = torch.tensor([[1.0]])
    eps = torch.tensor([[0.0]])
    x_t = add_noise(x0, eps, 0.25)  # 0.5 * 1 + 0.866 * 0 = 0.5
    assert x_t.item() == pytest.approx(0.5)
    v = training_target(x0, eps, 0.25, "v")  # 0.5 * 0 - 0.866 * 1
    assert v.item() == pytest.approx(-math.sqrt(0.75), rel=1e-7)
    # x0 = sqrt(a) x_t - sqrt(1-a) v = 0.25 + 0.75 = 1; eps = sqrt(a) v + sqrt(1-a) x_t = -0.433 + 0.433 = 0
    x0_hat, eps_hat = predict_x0_eps(v, x_t, 0.25, "v")
    assert x0_hat.item() == pytest.approx(1.0, abs=1e-7)
    assert eps_hat.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_round_trip_every_prediction(prediction, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    noise = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    ac = alphas_cumprod(sd_linear_betas())
    # per-sample levels from nearly clean to the noisiest SD level
    a = ac[torch.tensor([0, 200, 600, 999])]
    x_t = add_noise(x0, noise, a)
    target = training_target(x0, noise, a, prediction)
    x0_hat, eps_hat = predict_x0_eps(target, x_t, a, prediction)
    assert x0_hat.dtype == dtype and eps_hat.dtype == dtype
    # float32 tol: x0 from eps divides by sqrt(a_999) = 0.068, amplifying ~1e-7 rounding of x_t about 15x;
    # eps from x0 divides by sqrt(1 - a_0) = 0.029, about 35x
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=tol * (1 if prediction != "eps" else 10))
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=tol * (1 if prediction != "x0" else 10))


def test_add_noise_per_sample_equals_scalar_calls():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    a = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    batched = add_noise(x0, noise, a)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], add_noise(x0[i : i + 1], noise[i : i + 1], float(a[i])), rtol=0, atol=0)
    # a = 1 is the clean sample itself
    torch.testing.assert_close(add_noise(x0, noise, 1.0), x0, rtol=0, atol=0)
    # [B, 1, 1] is accepted as already broadcast
    torch.testing.assert_close(add_noise(x0, noise, a.view(3, 1, 1)), batched, rtol=0, atol=0)


def test_bf16_inputs_computed_in_float32():
    x0 = torch.randn(2, 4, generator=torch.Generator().manual_seed(2)).bfloat16()
    out = add_noise(x0, x0, 0.5)
    assert out.dtype == torch.float32
    x0_hat, eps_hat = predict_x0_eps(x0, x0, 0.5, "v")
    assert x0_hat.dtype == torch.float32 and eps_hat.dtype == torch.float32


def test_prediction_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="prediction must be one of"):
        predict_x0_eps(x, x, 0.5, "epsilon")
    with pytest.raises(ValueError, match="prediction must be one of"):
        training_target(x, x, 0.5, "sample")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        add_noise(x, x, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        add_noise(x, x, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        predict_x0_eps(torch.zeros(2, 4), x, 0.5, "eps")
    with pytest.raises(ValueError, match="per-sample value"):
        per_sample(torch.zeros(2, 3, 4, 5), x)
