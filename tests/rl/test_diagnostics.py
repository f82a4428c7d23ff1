"""pg_weight (the supervised control) and the per-epoch diagnostics of lrpo.rl.diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from lrpo.rl.diagnostics import gradient_balance, group_signal_to_noise, shift_one_pixel
from lrpo.rl.trainer import LRPOTrainer

from tests.rl.test_trainer import DEFAULTS, _state_equal, make_cfg, setup_dirs  # noqa: F401  (setup_dirs is a fixture)


def test_gradient_balance_norms_share_and_cosine():
    # (3, 4) and (4, -3): both of norm 5, orthogonal -> cos 0, share 5 / (5 + 5) = 0.5
    out = gradient_balance([torch.tensor([3.0]), torch.tensor([4.0])], [torch.tensor([4.0]), torch.tensor([-3.0])])
    assert out == pytest.approx({"diag_grad_norm_pg": 5.0, "diag_grad_norm_reg": 5.0, "diag_grad_cos": 0.0, "diag_pg_share": 0.5})
    # (1, 0) and (2, 0): parallel -> cos 1; share 1 / 3
    out = gradient_balance([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 0.0])])
    assert out["diag_grad_cos"] == pytest.approx(1.0) and out["diag_pg_share"] == pytest.approx(1 / 3)
    # a term that reaches no parameter counts as zero: norm 0, cos reported 0
    out = gradient_balance([None, torch.tensor([2.0])], [None, None])
    assert out == pytest.approx({"diag_grad_norm_pg": 2.0, "diag_grad_norm_reg": 0.0, "diag_grad_cos": 0.0, "diag_pg_share": 1.0})


def test_group_signal_to_noise_by_hand():
    # groups (ids 7 and 3) [0, 1] and [2, 4]: within-group std 0.5 and 1.0 -> signal 0.75.
    # The shift changes group 7 by (+0.1, -0.1) (group mean 0) and group 3 not at all:
    # noise = sqrt((0.1^2 + 0.1^2 + 0 + 0) / 4) = sqrt(0.005) = 0.070711; snr = 0.75 / 0.070711 = 10.607.
    # Both rankings survive: agreement 1.
    scores = torch.tensor([0.0, 2.0, 1.0, 4.0])
    shifted = torch.tensor([0.1, 2.0, 0.9, 4.0])
    ids = torch.tensor([7, 3, 7, 3])
    out = group_signal_to_noise(scores, shifted, ids)
    assert out["diag_reward_within_std"] == pytest.approx(0.75)
    assert out["diag_reward_noise_rms"] == pytest.approx(math.sqrt(0.005))
    assert out["diag_reward_snr"] == pytest.approx(0.75 / math.sqrt(0.005))
    assert out["diag_rank_agreement"] == pytest.approx(1.0)
    assert group_signal_to_noise(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0])) == {}  # no group of 2


def test_shift_one_pixel_repeats_the_first_column():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # rows [0 1 2], [3 4 5]
    assert shift_one_pixel(x).tolist() == [[[[0.0, 0.0, 1.0], [3.0, 3.0, 4.0]]]]


def _one_update_gradients(trainer: LRPOTrainer, only: str | None) -> list[torch.Tensor]:
    """Gradients of one minibatch at every trained step: of the whole loss, or of one term."""
    batch = trainer.collect(0)
    rewards, _ = trainer.score(batch, 0)
    adv, keep, _ = trainer.advantages(rewards, batch.group_ids)
    gt = trainer.gt_targets(batch)
    idx = keep.nonzero().flatten()[:8]
    steps = torch.arange(trainer.n_train).repeat_interleave(len(idx))
    rows = idx.repeat(trainer.n_train)
    trainer.optimizer.zero_grad(set_to_none=True)
    terms, _ = trainer.step_terms(batch, rows, steps, adv, gt)
    (terms[only] if only else sum(terms.values())).backward()
    return [p.grad.clone() for p in trainer.params]


def test_pg_weight_zero_leaves_exactly_the_gt_terms_gradient(setup_dirs, tmp_path):
    faces, base = setup_dirs
    over = dict(DEFAULTS, reg_weight=1.0, reg_last_k=2)
    control = LRPOTrainer(make_cfg(faces, base, tmp_path / "c", pg_weight=0.0, **over), progress=False)
    whole = _one_update_gradients(control, None)
    control2 = LRPOTrainer(make_cfg(faces, base, tmp_path / "c2", pg_weight=0.0, **over), progress=False)
    reg_only = _one_update_gradients(control2, "reg")
    assert all(torch.equal(a, b) for a, b in zip(whole, reg_only))  # bit for bit
    lrpo = LRPOTrainer(make_cfg(faces, base, tmp_path / "l", **over), progress=False)
    with_pg = _one_update_gradients(lrpo, None)
    assert any(not torch.equal(a, b) for a, b in zip(with_pg, reg_only))  # the PG term does reach the weights


def test_epochs_log_the_update_balance_and_the_reward_signal_without_changing_the_run(setup_dirs, tmp_path):
    faces, base = setup_dirs
    over = dict(DEFAULTS, epochs=2)
    on = LRPOTrainer(make_cfg(faces, base, tmp_path / "on", **over), progress=False)
    on.run()
    for rec in on.history:
        for key in ("diag_grad_norm_pg", "diag_grad_norm_reg", "diag_grad_cos", "diag_pg_share", "diag_reward_snr",
                    "diag_reward_within_std", "diag_rank_agreement"):
            assert key in rec and math.isfinite(rec[key]), (key, rec)
        assert rec["diag_grad_norm_pg"] > 0 and rec["diag_grad_norm_reg"] > 0  # both terms are in the first minibatch
        assert -1.0 <= rec["diag_grad_cos"] <= 1.0
    off = LRPOTrainer(make_cfg(faces, base, tmp_path / "off", diagnostics=False, **over), progress=False)
    off.run()
    assert not any(k.startswith("diag_") for rec in off.history for k in rec)
    _state_equal(on, off)  # measuring changes nothing: no gradient accumulates, no random draw is taken


def test_the_reward_signal_is_measured_on_the_first_groups_only(setup_dirs, tmp_path, monkeypatch):
    """The shifted second reward pass scores DIAG_GROUPS groups (here 1 of 4: 4 of 16 images)."""
    from lrpo.rl import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "DIAG_GROUPS", 1)
    faces, base = setup_dirs
    tr = LRPOTrainer(make_cfg(faces, base, tmp_path / "one", epochs=1, **DEFAULTS), progress=False)
    sizes = []
    real = tr.reward.__call__

    def counting(inp):
        sizes.append(len(inp.images))
        return real(inp)

    monkeypatch.setattr(tr, "reward", counting)
    tr.run()
    assert sizes[:2] == [16, 4]  # the epoch's reward, then the shifted pass over one group of 4
    assert math.isfinite(tr.history[-1]["diag_reward_snr"])
