"""Tests for lrpo.rl.losses; expected values are derived by hand in the comments."""

import math

import pytest
import torch

from lrpo.rl.losses import (
    gt_likelihood_regularizer,
    gt_path,
    kl_to_reference,
    num_train_steps,
    ppo_clip_loss,
    regularizer_step_mask,
)


# ---------------------------------------------------------------------------------------------
# PPO clip loss
# ---------------------------------------------------------------------------------------------
def test_ppo_clip_loss_exact_value():
    # clip_range 0.1, so clip(r) lies in [0.9, 1.1]; per sample max(-A r, -A clip(r)):
    #   r = 1.5,  A =  1: max(-1.5, -1.1) = -1.1
    #   r = 0.5,  A =  1: max(-0.5, -0.9) = -0.5
    #   r = 1.5,  A = -2: max( 3.0,  2.2) =  3.0
    #   r = 1.05, A =  3: max(-3.15, -3.15) = -3.15
    # loss = (-1.1 - 0.5 + 3.0 - 3.15) / 4 = -1.75 / 4 = -0.4375
    # approx_kl = 0.5 * mean(log r ^ 2); clip fraction: |r - 1| > 0.1 for 3 of 4 = 0.75
    ratios = torch.tensor([1.5, 0.5, 1.5, 1.05], dtype=torch.float64)
    old = torch.tensor([-1.0, -2.0, 0.5, -0.3], dtype=torch.float64)
    new = old + ratios.log()
    adv = torch.tensor([1.0, 1.0, -2.0, 3.0], dtype=torch.float64)
    stats = ppo_clip_loss(new, old, adv, clip_range=0.1)
    assert stats.loss.item() == pytest.approx(-0.4375, abs=1e-12)
    expected_kl = 0.5 * (2 * math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.05) ** 2) / 4
    assert stats.approx_kl.item() == pytest.approx(expected_kl, abs=1e-12)
    assert stats.clip_fraction.item() == 0.75
    # the largest |log r| is |log 0.5| = log 2
    assert stats.max_abs_log_ratio.item() == pytest.approx(math.log(2.0), abs=1e-12)
    assert stats.loss.ndim == stats.approx_kl.ndim == stats.clip_fraction.ndim == 0


def test_ppo_clip_loss_gradient_signs():
    # at ratio 1 the loss is -mean(A * r), so d loss / d log_prob_i = -A_i / N:
    # gradient descent raises the log-prob of positive-advantage samples and lowers the others.
    old = torch.tensor([-0.7, -0.7, -0.7])
    new = old.clone().requires_grad_(True)
    adv = torch.tensor([2.0, -1.0, 0.0])
    ppo_clip_loss(new, old, adv, clip_range=1e-4).loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([-2.0 / 3, 1.0 / 3, 0.0]), rtol=1e-6, atol=1e-7)
    # beyond the trust region in the favoured direction the clipped branch wins: no gradient
    new = (old + torch.tensor([0.5, -0.5, 0.0])).requires_grad_(True)  # r = e^0.5, e^-0.5, 1
    ppo_clip_loss(new, old, torch.tensor([1.0, -1.0, 1.0]), clip_range=0.1).loss.backward()
    assert new.grad[0] == 0 and new.grad[1] == 0 and new.grad[2] < 0


def test_ppo_clip_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="must all be"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0)


# ---------------------------------------------------------------------------------------------
# GT likelihood regulariser
# ---------------------------------------------------------------------------------------------
def test_gt_likelihood_regularizer_values_and_gradient():
    # m = 0 -> 1 - e^0 = 0; m = -40 -> 1 - e^-1 = 0.632121; mean = 0.316060
    m = torch.tensor([0.0, -40.0], dtype=torch.float64, requires_grad=True)
    loss = gt_likelihood_regularizer(m)
    assert loss.item() == pytest.approx((1 - math.exp(-1)) / 2, abs=1e-15)
    # d/dm_i = -exp(m_i / tau) / (tau * N): negative, so descent raises the GT likelihood
    loss.backward()
    torch.testing.assert_close(m.grad, torch.tensor([-1 / 80, -math.exp(-1) / 80], dtype=torch.float64))
    # tau = 20, m = -40 -> 1 - e^-2
    loss = gt_likelihood_regularizer(torch.tensor([-40.0]), tau=20.0)
    assert loss.item() == pytest.approx(1 - math.exp(-2), rel=1e-6)
    with pytest.raises(ValueError, match="tau"):
        gt_likelihood_regularizer(torch.zeros(2), tau=0.0)


# ---------------------------------------------------------------------------------------------
# GT path
# ---------------------------------------------------------------------------------------------
def test_gt_path_marginal_exact_with_given_noise():
    # x0 = 2; levels 0.64 (sqrt 0.8, noise sqrt 0.6) and 0.36 (sqrt 0.6, noise sqrt 0.8), z = (1, -1):
    # g = 0.8 * 2 + 0.6 * 1 = 2.2 and 0.6 * 2 + 0.8 * (-1) = 0.4
    x0 = torch.tensor([[2.0]], dtype=torch.float64)
    z = torch.tensor([1.0, -1.0], dtype=torch.float64).view(2, 1, 1)
    g = gt_path(x0, torch.tensor([0.64, 0.36], dtype=torch.float64), noise=z)
    assert g.shape == (2, 1, 1)
    torch.testing.assert_close(g.flatten(), torch.tensor([2.2, 0.4], dtype=torch.float64), rtol=0, atol=1e-14)


def test_gt_path_compounded_exact_with_given_noise():
    # chain runs least noisy first: 0.64 then 0.36; z in chain order (1, -1).
    # h1 = 0.8 * 2 + 0.6 * 1 = 2.2;  h2 = 0.6 * h1 + 0.8 * (-1) = 1.32 - 0.8 = 0.52.
    # requested order (0.36, 0.64) -> (0.52, 2.2)
    x0 = torch.tensor([[2.0]], dtype=torch.float64)
    z = torch.tensor([1.0, -1.0], dtype=torch.float64).view(2, 1, 1)
    g = gt_path(x0, torch.tensor([0.36, 0.64]), mode="compounded", noise=z)
    torch.testing.assert_close(g.flatten(), torch.tensor([0.52, 2.2], dtype=torch.float64), rtol=0, atol=1e-7)
    # an explicit longer chain 0.9 -> 0.64 -> 0.36 with zero noise: h = sqrt(0.9 * 0.64 * 0.36) * 2
    #   = sqrt(0.20736) * 2 = 0.910736
    g = gt_path(
        x0, torch.tensor([0.36]), mode="compounded", noise=torch.zeros(3, 1, 1, dtype=torch.float64),
        chain_alphas_cumprod=torch.tensor([0.36, 0.9, 0.64]),
    )
    assert g.item() == pytest.approx(2 * math.sqrt(0.20736), abs=1e-7)
    with pytest.raises(ValueError, match="not in chain"):
        gt_path(x0, torch.tensor([0.5]), mode="compounded", noise=torch.zeros(3, 1, 1),
                chain_alphas_cumprod=torch.tensor([0.36, 0.9, 0.64]))


def _sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def test_gt_path_compounded_reproduces_the_reference_loop():
    # The reference (BFR_RL train_lrpo.py) restated: start at the GT latent; for i = 0..49 apply
    # h <- sqrt(a(t_i)) h + sqrt(1 - a(t_i)) z_i with t_i = 1 + 20 i (least noisy first); store the
    # states most noisy first, so the target of step j (t = 981 - 20 j) is state row j + 1.
    ac = _sd_alphas_cumprod()
    t = torch.arange(981, 0, -20)  # sampler order
    a_prev = torch.cat([ac[t[1:]], ac[:1]])  # target level of each of the 50 steps
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 4, 3, 3, generator=g)
    z = torch.randn(50, 2, 4, 3, 3, generator=g)  # z[i] for chain level t = 1 + 20 i
    h, states = x0, []
    for i in range(50):
        a = ac[1 + 20 * i].item()
        h = math.sqrt(a) * h + math.sqrt(1 - a) * z[i]
        states.append(h)
    traj = torch.stack(states[::-1])  # row m <-> t = 981 - 20 m
    reference_targets = traj[1:]  # step j -> level t_j - 20, for the 49 trained steps

    # all 49 trained steps: their target levels are sampler levels t = 961 .. 1
    ours = gt_path(x0, a_prev[:49], mode="compounded", noise=z[:49])
    torch.testing.assert_close(ours, reference_targets, rtol=1e-6, atol=1e-6)
    # only the K = 5 regularised steps (t = 101 .. 21, targets 81 .. 1): same chain prefix
    ours = gt_path(x0, a_prev[44:49], mode="compounded", noise=z[:5])
    torch.testing.assert_close(ours, reference_targets[44:49], rtol=1e-6, atol=1e-6)
    # explicit chain through every sampler level (float32 copy, as the reference stores it)
    chain = ac[torch.arange(1, 1000, 20)].float()
    ours = gt_path(x0, a_prev[:49], mode="compounded", noise=z, chain_alphas_cumprod=chain)
    torch.testing.assert_close(ours, reference_targets, rtol=1e-6, atol=1e-6)
    # the final step's target alphas_cumprod[0] is not a sampler level, so not in that chain
    with pytest.raises(ValueError, match="not in chain"):
        gt_path(x0, a_prev, mode="compounded", noise=z, chain_alphas_cumprod=chain)


N_STAT = 200_000  # elements per level; standard errors below are derived from it
SE = 1.0 / math.sqrt(N_STAT)  # 0.00224


def _flat_stats(g: torch.Tensor):
    flat = g.reshape(g.shape[0], -1).double()
    return flat.mean(dim=1), flat.var(dim=1, correction=0), torch.corrcoef(flat)


def test_gt_path_marginal_statistics():
    # q(x_t | x_0): mean sqrt(a) x0, variance 1 - a, independent across levels.
    # Standard errors for n = 200k: mean sqrt(var / n) <= 0.0022, variance var sqrt(2 / n) <= 0.0032,
    # correlation 1 / sqrt(n) = 0.0022; we allow 5 standard errors.
    levels = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    x0 = torch.full((2, N_STAT // 2), 1.5)
    g = gt_path(x0, levels, generator=torch.Generator().manual_seed(0))
    mean, var, corr = _flat_stats(g)
    torch.testing.assert_close(mean, 1.5 * levels.sqrt(), rtol=0, atol=5 * SE)
    torch.testing.assert_close(var, 1 - levels, rtol=0, atol=5 * math.sqrt(2) * SE)
    off_diagonal = corr[~torch.eye(3, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 * SE


def test_gt_path_compounded_statistics():
    # Reference chain 0.9 -> 0.6 -> 0.3 applies the marginal formula to the noised latent, so the
    # effective alpha is the running product P = (0.9, 0.54, 0.162): mean sqrt(P) x0, variance
    # 1 - P = (0.1, 0.46, 0.838), NOT 1 - a = (0.1, 0.4, 0.7): the compounded GT is noisier than
    # the level it stands for. Consecutive states are correlated:
    #   corr(h_l, h_{l-1}) = sqrt(c_l * Var_{l-1} / Var_l):
    #   sqrt(0.6 * 0.1 / 0.46) = 0.36116,  sqrt(0.3 * 0.46 / 0.838) = 0.40581,
    #   corr(h_3, h_1) = sqrt(0.3 * 0.6 * 0.1 / 0.838) = 0.14656.
    # Tolerances: 5 standard errors as in the marginal test.
    levels = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)  # any order
    x0 = torch.full((2, N_STAT // 2), 1.5)
    g = gt_path(x0, levels, mode="compounded", generator=torch.Generator().manual_seed(1))
    mean, var, corr = _flat_stats(g)  # rows follow the requested order 0.3, 0.6, 0.9
    p = torch.tensor([0.162, 0.54, 0.9], dtype=torch.float64)
    torch.testing.assert_close(mean, 1.5 * p.sqrt(), rtol=0, atol=5 * SE)
    torch.testing.assert_close(var, 1 - p, rtol=0, atol=5 * math.sqrt(2) * SE)
    assert corr[1, 2].item() == pytest.approx(math.sqrt(0.6 * 0.1 / 0.46), abs=5 * SE)
    assert corr[0, 1].item() == pytest.approx(math.sqrt(0.3 * 0.46 / 0.838), abs=5 * SE)
    assert corr[0, 2].item() == pytest.approx(math.sqrt(0.3 * 0.6 * 0.1 / 0.838), abs=5 * SE)


def test_gt_path_randomness_and_argument_checks():
    x0 = torch.zeros(2, 3)
    levels = torch.tensor([0.5, 0.25])
    a = gt_path(x0, levels, generator=torch.Generator().manual_seed(7))
    b = gt_path(x0, levels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (2, 2, 3) and a.dtype == torch.float32
    with pytest.raises(ValueError, match="exactly one"):
        gt_path(x0, levels)
    with pytest.raises(ValueError, match="exactly one"):
        gt_path(x0, levels, generator=torch.Generator(), noise=torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="noise must have shape"):
        gt_path(x0, levels, noise=torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        gt_path(x0, torch.tensor([0.5, 1.5]), generator=torch.Generator())
    with pytest.raises(ValueError, match="mode"):
        gt_path(x0, levels, mode="chained", generator=torch.Generator())
    with pytest.raises(ValueError, match="only applies"):
        gt_path(x0, levels, generator=torch.Generator(), chain_alphas_cumprod=levels)


# ---------------------------------------------------------------------------------------------
# step bookkeeping
# ---------------------------------------------------------------------------------------------
def test_regularizer_step_mask_matches_spec():
    # 49 trained steps of 50, K = 5: steps 44..48, t = 981 - 20 j = 101, 81, 61, 41, 21
    mask = regularizer_step_mask(49, 5)
    assert mask.shape == (49,) and mask.dtype == torch.bool
    steps = mask.nonzero().flatten()
    assert steps.tolist() == [44, 45, 46, 47, 48]
    assert (981 - 20 * steps).tolist() == [101, 81, 61, 41, 21]
    assert not regularizer_step_mask(49, 0).any()
    assert regularizer_step_mask(3, 3).all()
    with pytest.raises(ValueError, match="k must be"):
        regularizer_step_mask(4, 5)


def test_num_train_steps_is_rounding_safe():
    assert num_train_steps(50, 0.99) == 49  # 49.5 -> 49
    assert 0.58 * 100 < 58  # the float trap a naive int(fraction * num_steps) falls into
    assert num_train_steps(100, 0.58) == 58
    assert num_train_steps(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert num_train_steps(50, 1.0) == 50
    assert num_train_steps(3, 0.7) == 2  # 2.1 -> 2
    with pytest.raises(ValueError, match="trains no step"):
        num_train_steps(10, 0.05)  # 0.5 -> 0
    with pytest.raises(ValueError, match="fraction"):
        num_train_steps(10, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        num_train_steps(10, 1.5)
    with pytest.raises(ValueError, match="num_steps"):
        num_train_steps(0, 0.5)


# ---------------------------------------------------------------------------------------------
# KL to a reference policy
# ---------------------------------------------------------------------------------------------
def test_kl_to_reference_exact_value():
    # sample 0: diffs (1, 2), std 2: (1 + 4) / (2 * 4) / 2 elements = 0.3125
    # sample 1: diffs (-1, -1), std 0.5: 1 / (2 * 0.25) = 2 per element -> 2
    mean = torch.tensor([[1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    kl = kl_to_reference(mean, ref, torch.tensor([[2.0], [0.5]]))
    torch.testing.assert_close(kl, torch.tensor([0.3125, 2.0]), rtol=0, atol=1e-7)
    kl.sum().backward()
    assert ref.grad is None  # the reference policy is a constant
    # d/d mean = (mean - ref) / (std^2 * elements): sample 0 -> (1/8, 2/8)
    torch.testing.assert_close(mean.grad[0], torch.tensor([0.125, 0.25]))
    assert kl_to_reference(torch.ones(1, 4), torch.ones(1, 4), 0.3).item() == 0.0
    with pytest.raises(ValueError, match="std must be > 0"):
        kl_to_reference(torch.ones(1, 4), torch.ones(1, 4), 0.0)
