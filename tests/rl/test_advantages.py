"""Tests for lrpo.rl.advantages; expected values are derived by hand in the comments."""

import math

import pytest
import torch

from lrpo.rl.advantages import group_advantages, noise_level_weights, step_advantages


# ---------------------------------------------------------------------------------------------
# group_advantages
# ---------------------------------------------------------------------------------------------
def test_two_groups_second_all_equal_is_dropped():
    # rewards [1, 2, 3 | 5, 5, 5], groups 0 and 1.
    # batch mean = 21 / 6 = 3.5; deviations -2.5 -1.5 -0.5 1.5 1.5 1.5;
    # squares 6.25 + 2.25 + 0.25 + 3 * 2.25 = 15.5; population var = 15.5 / 6 = 31/12;
    # std = sqrt(31/12) = 1.607275...
    # group 0 mean = 2 -> centred -1, 0, 1 -> A = (-1, 0, 1) / (1.607275 + 1e-4) = (-0.622132, 0, 0.622132)
    # group 1: max == min -> dropped, A = 0, keep = False.
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    res = group_advantages(rewards, ids)
    std = math.sqrt(31 / 12)
    assert res.std == pytest.approx(std, rel=1e-12)
    a = 1.0 / (std + 1e-4)
    assert a == pytest.approx(0.622132, abs=1e-6)
    torch.testing.assert_close(res.advantages, torch.tensor([-a, 0.0, a, 0.0, 0.0, 0.0]), rtol=0, atol=1e-7)
    assert res.keep.tolist() == [True, True, True, False, False, False]
    assert res.num_dropped_groups == 1
    assert res.advantages.dtype == torch.float32 and res.keep.dtype == torch.bool


def test_non_contiguous_and_negative_group_ids():
    # ids [5, -2, 5, -2], rewards [0, 1, 4, 3]: group 5 = {0, 4} mean 2, group -2 = {1, 3} mean 2.
    # batch mean 2, deviations -2 -1 2 1, population var = (4+1+4+1)/4 = 2.5, std = sqrt(2.5).
    # A = (-2, -1, 2, 1) / (sqrt(2.5) + 1e-4)
    rewards = torch.tensor([0.0, 1.0, 4.0, 3.0])
    ids = torch.tensor([5, -2, 5, -2])
    res = group_advantages(rewards, ids)
    d = math.sqrt(2.5) + 1e-4
    torch.testing.assert_close(res.advantages, torch.tensor([-2 / d, -1 / d, 2 / d, 1 / d]), rtol=0, atol=1e-7)
    assert res.keep.all() and res.num_dropped_groups == 0
    # the same candidates listed group by group give the same advantages, permuted
    perm = torch.tensor([0, 2, 1, 3])
    res_sorted = group_advantages(rewards[perm], ids[perm])
    torch.testing.assert_close(res_sorted.advantages, res.advantages[perm], rtol=0, atol=0)


def test_per_group_std_with_unequal_group_sizes():
    # group 0 = {1, 3}: mean 2, population std 1 -> A = (-1, 1) / (1 + 1e-4)
    # group 1 = {0, 3, 6}: mean 3, var (9 + 0 + 9) / 3 = 6 -> A = (-3, 0, 3) / (sqrt(6) + 1e-4)
    # logged std = mean(1, sqrt 6)
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0, 6.0])
    ids = torch.tensor([0, 1, 0, 1, 1])
    res = group_advantages(rewards, ids, global_std=False)
    d0, d1 = 1 + 1e-4, math.sqrt(6) + 1e-4
    torch.testing.assert_close(res.advantages, torch.tensor([-1 / d0, -3 / d1, 1 / d0, 0.0, 3 / d1]), rtol=0, atol=1e-7)
    assert res.std == pytest.approx((1 + math.sqrt(6)) / 2, rel=1e-12)


def test_std_override_replaces_local_std():
    # the trainer passes the std of all processes' rewards; with std 2: A = (-1, 0, 1) / 2.0001
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    res = group_advantages(rewards, ids, std_override=2.0)
    torch.testing.assert_close(res.advantages[:3], torch.tensor([-1, 0.0, 1]) / 2.0001, rtol=0, atol=1e-7)
    assert res.std == 2.0
    with pytest.raises(ValueError, match="global_std=False"):
        group_advantages(rewards, ids, global_std=False, std_override=2.0)
    with pytest.raises(ValueError, match="std_override"):
        group_advantages(rewards, ids, std_override=-1.0)


def test_all_equal_uses_exact_equality_and_singletons_are_dropped():
    # group 0: three copies of 0.1 (their float mean need not be exactly 0.1) -> dropped, A exactly 0.
    # group 1: differs by 1e-12 -> kept: a tiny but real signal.
    # group 2: a single candidate has nothing to compare with -> dropped.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.1 + 1e-12, 7.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    res = group_advantages(rewards, ids)
    assert res.keep.tolist() == [False, False, False, True, True, True, False]
    assert res.num_dropped_groups == 2
    assert (res.advantages[:3] == 0).all() and res.advantages[6] == 0
    assert res.advantages[5] > 0


def test_matches_a_plain_per_group_loop():
    # an independent, loop-based statement of the formula on random data with uneven groups
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (300,), generator=g) * 7 - 40  # sparse, negative ids
    rewards = torch.rand(300, generator=g, dtype=torch.float64)
    rewards[ids == ids[0]] = 0.25  # one constant group
    res = group_advantages(rewards, ids)
    std = rewards.std(correction=0).item()
    expected = torch.zeros(300, dtype=torch.float64)
    dropped = 0
    for gid in ids.unique().tolist():
        members = (ids == gid).nonzero().flatten()
        r = rewards[members]
        if r.max() == r.min():
            dropped += 1
            continue
        expected[members] = (r - r.mean()) / (std + 1e-4)
    assert res.num_dropped_groups == dropped >= 1
    torch.testing.assert_close(res.advantages, expected.float(), rtol=1e-6, atol=1e-6)
    assert (res.keep == (expected != 0)).all()


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        group_advantages(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))


# ---------------------------------------------------------------------------------------------
# noise-level weights
# ---------------------------------------------------------------------------------------------
def test_noise_level_weights_small_example():
    # sigmas (1, 2, 3): mean 2 -> w = (0.5, 1, 1.5)
    w = noise_level_weights(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64), rtol=0, atol=1e-15)


def test_noise_level_weights_errors():
    with pytest.raises(ValueError, match="negative"):
        noise_level_weights(torch.tensor([0.1, -0.2]))
    with pytest.raises(ValueError, match="all sigmas are zero"):
        noise_level_weights(torch.zeros(5))


def test_noise_level_weights_match_spec_for_sd_schedule():
    # SD 2.1 "linear" schedule, 50 DDIM steps t = 981, 961, ..., 1, eta = 1; the last step goes to
    # alphas_cumprod[0]. sigma = eta * sqrt((1 - a_p) / (1 - a_t)) * sqrt(1 - a_t / a_p).
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    t = torch.arange(981, 0, -20)
    assert len(t) == 50 and t[-1] == 1
    a_t = alphas_cumprod[t]
    a_p = torch.cat([alphas_cumprod[t[1:]], alphas_cumprod[:1]])
    sigmas = torch.sqrt((1 - a_p) / (1 - a_t)) * torch.sqrt(1 - a_t / a_p)
    w = noise_level_weights(sigmas)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    # SPEC quotes 3 decimals, so the values agree to within half a unit of the last place (5e-4);
    # the middle value is quoted as "about 1.015" (it is 1.0145), hence 1e-3 there.
    expected = {981: 1.603, 101: 0.504, 81: 0.467, 61: 0.421, 41: 0.352, 21: 0.139, 1: 0.073}
    for timestep, value in expected.items():
        j = (981 - timestep) // 20
        assert w[j].item() == pytest.approx(value, abs=5e-4), f"t={timestep}"
    assert w[25].item() == pytest.approx(1.015, abs=1e-3)
    assert (w[:-1] >= w[1:]).all()  # noisier steps get more credit


# ---------------------------------------------------------------------------------------------
# step advantages
# ---------------------------------------------------------------------------------------------
def test_step_advantages_scale_and_clip():
    # A = (1, -2, 4), w = (0.5, 2):  w_j * A_i = [[0.5, 2], [-1, -4], [2, 8]]; 8 clips to 5.
    out = step_advantages(torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert out.shape == (3, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.5, 2.0], [-1.0, -4.0], [2.0, 5.0]]), rtol=0, atol=0)
    # the bound is symmetric: (1, -2) * 2 = (2, -4), and -4 clips to -3
    out = step_advantages(torch.tensor([1.0, -2.0]), torch.tensor([2.0]), clip=3.0)
    assert out.flatten().tolist() == [2.0, -3.0]
    with pytest.raises(ValueError, match="clip"):
        step_advantages(torch.ones(2), torch.ones(2), clip=0.0)
