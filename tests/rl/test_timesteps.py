"""train_timesteps (lrpo.rl.timesteps): which trained steps an epoch's update trains.

What must hold:
  * the spec parses or fails naming the key and the allowed range;
  * random:K is reproducible from (trajectory seed, epoch) alone (not from batch order or the other
    trajectories), differs across epochs and covers every step over epochs;
  * window:K:s slides by s and wraps: n_train = 5, K = 2, s = 2 -> {0,1}, {2,3}, {4,0}, {1,2} ...;
  * random:K+reg always holds the last reg_last_k steps and draws K from the steps before them;
  * in the trainer, a selection of every step (random:S, window:S) is bit-identical to `all`; a
    real subset keeps the first-step ratio at 1 and resumes exactly (1 + 1 epochs == 2).
"""

from __future__ import annotations

import re

import pytest
import torch

from lrpo.config import ConfigError
from lrpo.rl.timesteps import TimestepSelection, parse_timestep_selection, selected_steps
from lrpo.rl.trainer import LRPOTrainer

from tests.rl.test_trainer import _state_equal, assert_resume_equals, make_cfg, setup_dirs  # noqa: F401  (setup_dirs is a fixture)


def test_parse_accepts_the_three_forms_and_names_the_key_otherwise():
    assert parse_timestep_selection("all", 49) == TimestepSelection("all")
    assert parse_timestep_selection("random:2", 49) == TimestepSelection("random", 2, 2)
    assert parse_timestep_selection("window:4", 49) == TimestepSelection("window", 4, 4)  # stride defaults to K
    assert parse_timestep_selection("window:4:1", 49) == TimestepSelection("window", 4, 1)
    for bad in ("some", "random", "random:0", "random:50", "random:2:1", "window:x", "window:2:0", "window:1:2:3"):
        with pytest.raises(ValueError, match=r"train_timesteps: expected 'all', 'random:K', 'random:K\+reg' or 'window:K\[:stride\]' with 1 <= K <= 49"):
            parse_timestep_selection(bad, 49)


def test_config_validation_checks_k_against_the_trained_steps(setup_dirs, tmp_path):
    faces, base = setup_dirs
    # sample_steps 4, train_fraction 0.75 -> floor(3.0) = 3 trained steps: K = 4 is too many
    with pytest.raises(ConfigError, match=r"1 <= K <= 3.*'random:4'"):
        make_cfg(faces, base, tmp_path / "x", train_fraction=0.75, train_timesteps="random:4")


def test_random_k_depends_on_the_trajectory_and_epoch_only():
    sel = parse_timestep_selection("random:2", 6)
    a = selected_steps(sel, 6, epoch=3, trajectory_seeds=[11, 22, 33])
    b = selected_steps(sel, 6, epoch=3, trajectory_seeds=[33, 11])  # another batch, another order
    assert a.shape == (3, 2) and a.dtype == torch.long
    assert torch.equal(b[0], a[2]) and torch.equal(b[1], a[0])
    assert torch.equal(a, selected_steps(sel, 6, 3, [11, 22, 33]))  # reproducible
    for row in a:
        assert len(set(row.tolist())) == 2 and row.tolist() == sorted(row.tolist()) and 0 <= int(row.min()) and int(row.max()) < 6
    per_epoch = [selected_steps(sel, 6, e, [11])[0].tolist() for e in range(40)]
    assert len({tuple(r) for r in per_epoch}) > 1  # not the same draw every epoch
    # complete over epochs: a step is missed by 40 independent draws of 2 of 6 with probability
    # (4/6)^40 ~ 9e-8, and the draws are fixed by the seeds, so this cannot flake
    assert set(sum(per_epoch, [])) == set(range(6))


def test_window_slides_by_its_stride_and_wraps():
    sel = parse_timestep_selection("window:2:2", 5)
    rows = [selected_steps(sel, 5, e, [7, 8])[0].tolist() for e in range(4)]
    # start = (epoch * 2) mod 5: 0 -> {0,1}; 2 -> {2,3}; 4 -> {4,0}; 6 mod 5 = 1 -> {1,2} (ascending)
    assert rows == [[0, 1], [2, 3], [0, 4], [1, 2]]
    assert torch.equal(*selected_steps(sel, 5, 1, [7, 8]))  # the same steps for every trajectory
    assert selected_steps(parse_timestep_selection("all", 5), 5, 0, [1]) is None


SHIPPED = dict(update_mode="per_timestep", train_fraction=0.75, reg_weight=1e-2, reg_last_k=2, minibatch_size=6)


# (random:1+reg with 3 trained steps and reg_last_k 2: the one step before the last two, and those;
# in accumulate mode with 2 steps per forward the width enters the loss scale len(steps) / n_slots)
@pytest.mark.parametrize("every_step, mode", [("random:3", {}), ("window:3", {}), ("random:1+reg", {}),
                                              ("random:1+reg", {"update_mode": "accumulate", "timesteps_per_forward": 2})])
def test_a_selection_of_every_step_is_bit_identical_to_all(setup_dirs, tmp_path, every_step, mode):
    faces, base = setup_dirs
    shipped = {**SHIPPED, **mode}
    ref = LRPOTrainer(make_cfg(faces, base, tmp_path / "all", epochs=1, **shipped), progress=False)
    ref.run()
    sel = LRPOTrainer(make_cfg(faces, base, tmp_path / "sel", epochs=1, train_timesteps=every_step, **shipped), progress=False)
    sel.run()
    _state_equal(ref, sel)
    for k in ("ppo_loss", "reg", "gt_log_density", "clip_fraction"):
        assert sel.history[-1][k] == ref.history[-1][k], k


def test_a_subset_trains_its_steps_with_ratio_one_first_and_resumes_exactly(setup_dirs, tmp_path, monkeypatch):
    faces, base = setup_dirs
    over = dict(train_timesteps="random:1", **SHIPPED)
    seen: list[list[int]] = []
    real = LRPOTrainer.step_loss

    def spy(self, batch, idx, steps, adv, gt):
        seen.append(steps.tolist())
        return real(self, batch, idx, steps, adv, gt)

    monkeypatch.setattr(LRPOTrainer, "step_loss", spy)
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "straight", epochs=2, **over), progress=False)
    straight.run()
    monkeypatch.setattr(LRPOTrainer, "step_loss", real)
    # 16 trajectories, minibatch 6 -> 3 minibatches x 1 slot = 3 optimiser steps per epoch
    assert len(seen) == 2 * 3 and {len(s) for s in seen} == {6, 4}
    assert len(set(sum(seen, []))) > 1  # the trajectories do not all train the same step
    for rec in straight.history:
        if "first_max_abs_log_ratio" in rec:
            assert rec["first_max_abs_log_ratio"] == 0.0 and rec["first_clip_fraction"] == 0.0
    assert "reg" in straight.history[-1]  # some chosen steps fall among the last reg_last_k

    assert_resume_equals(straight, faces, base, tmp_path / "split", **over)


def test_random_k_plus_reg_always_trains_the_regularised_steps():
    # 6 trained steps, reg_last_k 2: steps 4 and 5 every epoch, plus 2 drawn from 0..3
    sel = parse_timestep_selection("random:2+reg", 6, reg_last_k=2)
    assert sel == TimestepSelection("random", 2, 2, last=2) and sel.width == 4
    per_epoch = [selected_steps(sel, 6, e, [11, 22]) for e in range(30)]
    for rows in per_epoch:
        assert rows.shape == (2, 4)
        for row in rows.tolist():
            assert row[2:] == [4, 5] and len(set(row[:2])) == 2 and all(0 <= j < 4 for j in row[:2]) and row[:2] == sorted(row[:2])
    # the drawn part covers 0..3 over epochs (missed by 30 draws of 2 of 4 with probability 0.5^30)
    assert {j for rows in per_epoch for j in rows[0, :2].tolist()} == {0, 1, 2, 3}
    # K may use every step before the last reg_last_k, no more; no reg steps: refused
    assert parse_timestep_selection("random:4+reg", 6, reg_last_k=2).width == 6
    for bad, k in (("random:5+reg", 2), ("random:2+reg", 0), ("random:0+reg", 2), ("random:x+reg", 2)):
        # the message quotes what was typed and the +reg limit: 6 trained steps less the last 2 -> K <= 4
        with pytest.raises(ValueError, match=rf"'random:K\+reg' needs reg_last_k >= 1 and 1 <= K <= {6 - min(k, 6)} .*got '{re.escape(bad)}'"):
            parse_timestep_selection(bad, 6, reg_last_k=k)
    for bad in ("window:2+reg", "random:2+rge"):
        with pytest.raises(ValueError, match=r"expected 'all', 'random:K', 'random:K\+reg'"):
            parse_timestep_selection(bad, 6, reg_last_k=2)


def test_random_k_plus_reg_trains_with_ratio_one_first_and_resumes_exactly(setup_dirs, tmp_path):
    """The shipped per_timestep mode with the GT term on: with 4 trained steps (train_fraction 1) and
    reg_last_k 2, random:1+reg trains 1 of steps {0, 1} plus {2, 3}: a real subset of 3; the first
    optimiser step of each epoch sees ratio 1; 1 + 1 epochs equal 2 straight."""
    faces, base = setup_dirs
    over = dict(SHIPPED, train_timesteps="random:1+reg", train_fraction=1.0)
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "a", epochs=2, **over), progress=False)
    assert straight.n_train == 4 and straight.n_slots == 1 + 2
    straight.run()
    for rec in straight.history:
        if "first_max_abs_log_ratio" in rec:
            assert rec["first_max_abs_log_ratio"] == 0.0 and rec["first_clip_fraction"] == 0.0
    assert "reg" in straight.history[-1]
    assert_resume_equals(straight, faces, base, tmp_path / "b", **over)


def test_the_shipped_cpu_preset_update_settings_keep_ratio_one_first_and_resume_exactly(setup_dirs, tmp_path):
    """lrpo-cpu.yaml's own update settings (timestep selection, update mode, train fraction, minibatch,
    lr, clip, lambda, K) on the tiny model: the path users take first. 4 sampler steps x 0.99 -> 3
    trained steps; the first optimiser step of every epoch sees ratio 1; 1 + 1 epochs equal 2."""
    import yaml

    from lrpo.config import SHIPPED_CONFIG_DIR

    shipped = yaml.safe_load((SHIPPED_CONFIG_DIR / "lrpo-cpu.yaml").read_text())
    keys = ("train_timesteps", "update_mode", "train_fraction", "minibatch_size", "lr", "clip_range", "reg_weight", "reg_last_k",
            "reg_tau")
    over = {k: shipped[k] for k in keys if k in shipped}
    assert over.get("train_fraction") == 0.99 and "update_mode" in over  # the file still sets what this test reads
    faces, base = setup_dirs
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "a", epochs=2, **over), progress=False)
    straight.run()
    firsts = [rec["first_max_abs_log_ratio"] for rec in straight.history if "first_max_abs_log_ratio" in rec]
    assert firsts == [0.0, 0.0]
    assert_resume_equals(straight, faces, base, tmp_path / "b", **over)


@pytest.mark.parametrize("compile", ["off", "on"])
def test_shared_prefix_rollouts_train_only_branched_steps_with_ratio_one_first_and_resume_exactly(setup_dirs, tmp_path, monkeypatch, compile):
    """branch_step=1 with the shipped per_timestep mode and train_fraction 0.99: 4 sampler steps -> 3
    trained (0, 1, 2); a group shares step 0, so only steps 1 and 2 are trained (reg_last_k 2 = both).
    A group's members hold one latent at steps 0 and 1 and part after; the first ratio of an epoch is 1
    (also with a compiled rollout, whose shared steps run eager); 1 + 1 epochs equal 2 straight."""
    faces, base = setup_dirs
    over = dict(SHIPPED, train_fraction=0.99, branch_step=1, compile=compile)
    seen: list[list[int]] = []
    real_loss, real_collect = LRPOTrainer.step_loss, LRPOTrainer.collect
    batches = []

    def spy(self, batch, idx, steps, adv, gt):
        seen.append(steps.tolist())
        return real_loss(self, batch, idx, steps, adv, gt)

    def keep(self, epoch):
        batches.append(real_collect(self, epoch))
        return batches[-1]

    monkeypatch.setattr(LRPOTrainer, "step_loss", spy)
    monkeypatch.setattr(LRPOTrainer, "collect", keep)
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "a", epochs=2, **over), progress=False)
    assert straight.n_train == 3 and straight.n_slots == 2
    straight.run()
    monkeypatch.setattr(LRPOTrainer, "step_loss", real_loss)
    monkeypatch.setattr(LRPOTrainer, "collect", real_collect)
    assert {j for s in seen for j in s} == {1, 2}
    latents, gids = batches[0].latents, batches[0].group_ids
    for g in gids.unique():
        rows = latents[gids == g]
        assert torch.equal(rows[:, :2], rows[:1, :2].expand_as(rows[:, :2]))  # x_T and step 0's result: shared
        assert not torch.equal(rows[0, 2], rows[1, 2])  # step 1 draws each member's own noise
    assert torch.equal(batches[0].log_probs[:, 0], torch.zeros(len(gids)))
    for rec in straight.history:
        assert rec["first_max_abs_log_ratio"] == 0.0 and rec["first_clip_fraction"] == 0.0, rec
    assert "reg" in straight.history[-1]
    assert_resume_equals(straight, faces, base, tmp_path / "b", **over)


def test_branch_step_is_checked_against_the_trained_steps_and_the_gt_term(setup_dirs, tmp_path):
    faces, base = setup_dirs
    # 4 sampler steps x 0.75 -> 3 trained steps: branch_step 3 would leave none to train
    with pytest.raises(ConfigError, match=r"branch_step must be in \[0, 3\).*got 3"):
        make_cfg(faces, base, tmp_path / "x", train_fraction=0.75, branch_step=3)
    # branching at 2 leaves 1 trainable step, but the GT-guided term was asked for the last 2
    with pytest.raises(ConfigError, match="reg_last_k=2 reaches into the 2 shared steps"):
        make_cfg(faces, base, tmp_path / "x", train_fraction=0.75, branch_step=2, reg_weight=1e-2, reg_last_k=2)
    # train_timesteps counts the branched steps: 2 of them, so random:3 is refused
    with pytest.raises(ConfigError, match=r"1 <= K <= 2.*'random:3'.*from branch_step on"):
        make_cfg(faces, base, tmp_path / "x", train_fraction=0.75, branch_step=1, reg_last_k=1, train_timesteps="random:3")
