"""lrpo.eval.stats: the figures behind "LRPO minus base" with intervals."""

from __future__ import annotations

import numpy as np
import pytest

from lrpo.eval import stats
from lrpo.eval.stats import mean_std, paired_bootstrap_ci


def test_mean_std_is_the_population_spread():
    # values 1, 2, 3: mean 2, squared deviations 1 + 0 + 1 = 2 over 3 -> std sqrt(2/3) = 0.8165
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, (2 / 3) ** 0.5))


def test_a_constant_paired_difference_has_a_zero_width_interval():
    # b = a - 0.1 for every face: every resample's mean difference is exactly 0.1, however hard
    # the faces are (a spans 0..1), which an unpaired comparison would not see
    a = np.linspace(0, 1, 20)
    mean, low, high = paired_bootstrap_ci(a, a - 0.1)
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_the_interval_matches_the_normal_approximation_of_a_mean():
    rng = np.random.default_rng(1)
    for n in (20, 320):
        d = 0.02 + 0.05 * rng.standard_normal(n)
        mean, low, high = paired_bootstrap_ci(d, np.zeros(n))
        assert low < mean < high and mean == pytest.approx(d.mean())
        # the bootstrap distribution of a mean is about normal with sd = std(d) / sqrt(n) (ddof 0,
        # as resampling the observed faces has), so the 95 % interval is about 2 * 1.96 of that
        # wide: 0.044 for n = 20 and sd 0.05, a quarter of it for 16x the faces
        assert high - low == pytest.approx(2 * 1.96 * d.std() / n**0.5, rel=0.15)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci(np.zeros(3), np.zeros(4))


def test_rank_agreement_is_spearmans_rho():
    from lrpo.eval.stats import rank_agreement

    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap of neighbours in 4: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert rank_agreement([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert rank_agreement([5, 5, 5], [1, 2, 3]) == 0.0  # nothing to order


def test_signal_to_noise_of_a_term_that_ignores_the_change_and_one_that_does_not():
    from lrpo.eval.stats import signal_to_noise

    scores = np.array([[0.0, 1.0], [2.0, 4.0]])  # within-group std 0.5 and 1.0: mean 0.75
    same = signal_to_noise(scores, scores)
    assert same["within_std"] == pytest.approx(0.75) and same["noise_rms"] == 0.0 and same["rank_agreement"] == 1.0
    # a change of +-0.75 on every score: RMS 0.75, ratio 1; the first group's order flips (0.75 > 0.25)
    noisy = signal_to_noise(scores, scores + np.array([[0.75, -0.75], [0.75, -0.75]]))
    assert noisy["noise_rms"] == pytest.approx(0.75) and noisy["snr"] == pytest.approx(1.0)
    assert noisy["rank_agreement"] == pytest.approx(0.0)  # one group agrees (+1), one is reversed (-1)


def test_a_change_shared_by_the_whole_group_is_not_noise():
    from lrpo.eval.stats import signal_to_noise

    scores = np.array([[0.0, 1.0, 3.0]])
    shared = signal_to_noise(scores, scores - 0.5)  # every candidate loses 0.5: the advantages do not move
    assert shared["noise_rms"] == pytest.approx(0.0) and shared["rank_agreement"] == pytest.approx(1.0)


def test_cpu_curve_sums_epoch_cpu_seconds_up_to_each_evaluation():
    # epoch-0 evaluation (no CPU yet), epochs of 30 s and 90 s, evaluated after the second:
    # x = 0 min and (30 + 90) / 60 = 2 min
    recs = [{"epoch": 0, "eval_reward": 0.5}, {"epoch": 1, "time_cpu_s": 30.0},
            {"epoch": 2, "time_cpu_s": 90.0, "eval_reward": 0.52}, {"epoch": 2, "interrupted": "SIGINT"}]
    xs, ys = stats.cpu_curve(recs)
    assert xs.tolist() == [0.0, 2.0] and ys.tolist() == [0.5, 0.52]


def test_curve_at_interpolates_inside_and_is_nan_outside():
    xs, ys = np.array([0.0, 2.0, 4.0]), np.array([0.0, 1.0, 3.0])
    # 1 is halfway between (0, 0) and (2, 1): 0.5; 3 halfway between (2, 1) and (4, 3): 2
    got = stats.curve_at(xs, ys, np.array([1.0, 3.0, 4.0, 5.0, -1.0]))
    assert got[:3].tolist() == [0.5, 2.0, 3.0] and np.isnan(got[3]) and np.isnan(got[4])
    with pytest.raises(ValueError, match="non-decreasing"):
        stats.curve_at(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.5)
