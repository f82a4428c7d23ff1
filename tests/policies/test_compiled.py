"""The compiled sampling forward's helpers (lrpo.policies.compiled) that the trainer's tests do not reach."""

from __future__ import annotations

import torch

from lrpo.policies.compiled import BackgroundCompile, batch1_example


class _Failing(torch.nn.Module):
    """A policy whose condition fails, as a compiler or a model could."""

    resolution = 8

    def condition(self, lq):
        raise RuntimeError("boom\nsecond line")


def test_a_failed_background_compile_leaves_callers_eager_and_says_why():
    job = BackgroundCompile(_Failing(), "cpu", "fp32")
    assert job.wait(60)
    assert job.ready() is None
    assert job.status() == "failed, running eager: RuntimeError: boom"  # the first line of the error, named


def test_the_batch1_example_is_one_face_at_the_policy_resolution(tiny_run):
    from lrpo.policies.loading import load_policy

    policy, _, _ = load_policy(tiny_run, "cpu")
    x_t, t, cond = batch1_example(policy, "cpu")
    assert x_t.shape[0] == t.shape[0] == cond.shape[0] == 1 and t.dtype == torch.long
    assert tuple(x_t.shape) == tuple(policy.sample_shape(cond)) and x_t.shape[-1] == policy.resolution
    with torch.no_grad():
        assert policy(x_t, t, cond).shape == x_t.shape
