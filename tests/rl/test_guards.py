"""Reward-hacking guards: the pure decision rule, and the trainer stopping/rolling back."""

from __future__ import annotations

import math

import pytest

from lrpo.config import ConfigError
from lrpo.rl.config import GuardConfig
from lrpo.rl.guards import guard_violations


def test_higher_is_better_limit():
    # PSNR 25 at start, tolerance 4 %: the limit is 25 * 0.96 = 24.0
    assert guard_violations({"psnr": 25.0}, {"psnr": 24.01}, ("psnr",), 0.04) == []
    (msg,) = guard_violations({"psnr": 25.0}, {"psnr": 23.99}, ("psnr",), 0.04)
    assert msg.startswith("psnr: 23.99") and "limit 24" in msg


def test_lower_is_better_limit():
    # LMD 10 px at start, tolerance 10 %: the limit is 11 px; going down is always fine
    assert guard_violations({"lmd": 10.0}, {"lmd": 10.9}, ("lmd",), 0.1) == []
    assert guard_violations({"lmd": 10.0}, {"lmd": 2.0}, ("lmd",), 0.1) == []
    assert len(guard_violations({"lmd": 10.0}, {"lmd": 11.1}, ("lmd",), 0.1)) == 1


def test_unmeasurable_metric_is_a_violation_and_missing_baseline_is_skipped():
    assert guard_violations({"identity": 0.8}, {"identity": math.nan}, ("identity",), 0.05) == ["identity: not measurable"]
    assert guard_violations({}, {"identity": 0.1}, ("identity",), 0.05) == []


def test_several_metrics_reported_together():
    got = guard_violations({"psnr": 20.0, "ssim": 0.8}, {"psnr": 10.0, "ssim": 0.5}, ("psnr", "ssim"), 0.0)
    assert [m.split(":")[0] for m in got] == ["psnr", "ssim"]


def test_guard_config_validation():
    GuardConfig(every=2, metrics=("psnr", "lmd")).validate()
    with pytest.raises(ConfigError, match="guard.metrics"):
        GuardConfig(every=1, metrics=("fid",)).validate()
    with pytest.raises(ConfigError, match="guard.preset"):
        GuardConfig(preset="harsh").validate()
