"""The trainer's invariants in every numeric mode (precision x compile), on the tiny pixel policy:

  * before the first optimiser step of an epoch the PPO ratio is exactly 1 and nothing is clipped:
    in bf16 eager because the rollout and the update run the same function and every output row
    depends only on its own input row (bf16 outputs round away what the batch size changes); in fp32
    and compiled modes because the update recomputes log pi_old with its own forwards, in its own
    minibatches (the same rows in the same order and batch sizes);
  * 1 + 1 epochs with a resume equal 2 straight, bit for bit (weights and AdamW state);
  * the mode used is in every epoch's log record.
Settings: lrpo-cpu.yaml's update settings and the shipped defaults (per_timestep, train_fraction 0.99).
"""

from __future__ import annotations

import pytest
import yaml

from lrpo.config import SHIPPED_CONFIG_DIR
from lrpo.policies.pixel_unet import PixelPolicy
from lrpo.precision import resolve_precision
from lrpo.rl.trainer import LRPOTrainer

from tests.rl.test_trainer import DEFAULTS, assert_resume_equals, make_cfg, setup_dirs  # noqa: F401  (setup_dirs is a fixture)

MODES = [("bf16", "off"), ("bf16", "on"), ("fp32", "on")]


def _shipped_update_settings() -> dict:
    shipped = yaml.safe_load((SHIPPED_CONFIG_DIR / "lrpo-cpu.yaml").read_text())
    keys = ("train_timesteps", "update_mode", "train_fraction", "minibatch_size", "lr", "clip_range", "reg_weight", "reg_last_k",
            "precision", "compile")
    return {k: shipped[k] for k in keys if k in shipped}


@pytest.mark.parametrize("precision, compile", MODES)
def test_first_ratio_is_exactly_one_with_the_shipped_defaults(setup_dirs, tmp_path, precision, compile):
    faces, base = setup_dirs
    tr = LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2, **DEFAULTS, precision=precision, compile=compile),
                     progress=False)
    assert (tr.sample_forward is not None) == (compile == "on")
    tr.run()
    for rec in tr.history:
        assert rec["first_max_abs_log_ratio"] == 0.0 and rec["first_clip_fraction"] == 0.0, rec
        assert rec["precision"] == precision and rec["compiled"] == (compile == "on")
    assert tr.history[-1]["approx_kl"] > 0  # later steps moved the policy: the check is not vacuous


@pytest.mark.parametrize("precision, compile", MODES + [("shipped", "shipped")])
def test_cpu_preset_update_keeps_ratio_one_and_resumes_exactly(setup_dirs, tmp_path, precision, compile):
    over = _shipped_update_settings()
    assert over["train_fraction"] == 0.99 and "precision" in over and "compile" in over  # the preset still sets them
    if precision != "shipped":
        over.update(precision=precision, compile=compile)
    faces, base = setup_dirs
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "a", epochs=2, **over), progress=False)
    straight.run()
    assert [rec["first_max_abs_log_ratio"] for rec in straight.history] == [0.0, 0.0]
    assert straight.history[0]["precision"] == resolve_precision(over["precision"], "cpu")
    assert_resume_equals(straight, faces, base, tmp_path / "b", **over)


@pytest.mark.parametrize("update_mode, per_forward", [("per_timestep", 1), ("accumulate", 2)])
def test_log_pi_old_is_recomputed_by_exactly_the_updates_forwards(setup_dirs, tmp_path, monkeypatch, update_mode, per_forward):
    """The recomputation (what a compiled rollout triggers) runs, without grad, the very forwards the
    update then runs with grad: the same rows, in the same order and batch sizes, at the same steps,
    so a kernel that rounds a row by its place in the batch still gives a first ratio of exactly 1."""
    import torch

    calls: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
    real = PixelPolicy.forward

    def spy(self, x_t, t, cond):
        calls.append((torch.is_grad_enabled(), x_t.detach().clone(), t.expand(x_t.shape[0]).clone()))
        return real(self, x_t, t, cond)

    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "run", epochs=1, update_mode=update_mode, timesteps_per_forward=per_forward,
                   minibatch_size=6, train_fraction=0.99, train_timesteps="random:2", diagnostics=False)
    tr = LRPOTrainer(cfg, progress=False)
    tr.recompute_old = True  # as with a compiled rollout, whose forwards this spy could not see
    monkeypatch.setattr(PixelPolicy, "forward", spy)
    tr.run()
    first_grad = next(i for i, c in enumerate(calls) if c[0])
    update = [c for c in calls[first_grad:] if c[0]]
    recomputed = calls[first_grad - len(update) : first_grad]
    assert len(update) == 3 * (2 if update_mode == "per_timestep" else 1)  # 16 kept rows in minibatches of 6, 2 steps each
    assert not any(c[0] for c in recomputed)
    for (_, x_r, t_r), (_, x_u, t_u) in zip(recomputed, update):
        assert torch.equal(x_r, x_u) and torch.equal(t_r, t_u)
    assert tr.history[-1]["first_max_abs_log_ratio"] == 0.0

