"""bench/pg_signal.py's parts: the flipped arm negates the scores the advantages see and keeps the
true total; the per-epoch pairing."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import pg_signal  # noqa: E402


class _Trainer:
    def score(self, batch, epoch):
        return torch.tensor([0.25, 0.75]), {"dwt": torch.tensor([0.125, 0.5])}


def test_flipped_scores_are_negated_and_the_true_total_is_kept():
    t = _Trainer()
    pg_signal.flip_advantages(t)
    scores, details = t.score(None, 0)
    # advantages are (s - group mean) / std: negating s flips every advantage's sign
    assert scores.tolist() == [-0.25, -0.75]
    assert details["true_total"].tolist() == [0.25, 0.75] and details["dwt"].tolist() == [0.125, 0.5]


def test_true_rewards_read_the_true_total_of_the_flipped_arm():
    history = [{"epoch": 1, "reward_mean": -0.5, "reward/true_total_mean": 0.5}, {"epoch": 2, "reward_mean": -0.6,
                                                                                    "reward/true_total_mean": 0.6}]
    assert pg_signal.true_rewards(history, flipped=True) == [0.5, 0.6]
    assert pg_signal.true_rewards(history, flipped=False) == [-0.5, -0.6]


def test_paired_difference_over_the_common_epochs():
    # differences 0.1, 0.1, 0.1 over the 3 epochs both reached: mean 0.1, interval [0.1, 0.1]
    out = pg_signal.paired([0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7])
    assert out["epochs"] == 3 and abs(out["mean"] - 0.1) < 1e-9 and out["ci95"] == [0.1, 0.1]
