"""Supervised pretraining (lrpo.pretrain.trainer): the LR schedule, data order, a tiny run, exact resume,
NaN handling and the time budget. Runs use the 16 px, 8-channel config of conftest (seconds each)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lrpo.pretrain.trainer as trainer_mod
from lrpo import checkpoint as ckpt_io
from lrpo.config import PretrainConfig, from_dict, load_config
from lrpo.pretrain.trainer import Pretrainer, lr_at, progress_after_warmup

from tests.conftest import single_thread, tiny_overrides, write_tiny_faces


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------
def test_lr_warmup_is_linear_from_the_first_step():
    # warm-up of 4 steps: lr * (step + 1) / 4, so step 0 already trains (1/4) and step 3 reaches lr
    assert [lr_at(s, 0.0, 1.0, 4, "cosine", 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_lr_cosine_hand_values():
    # after warm-up: lr = base * (m + (1 - m) * (1 + cos(pi p)) / 2) with m = 0.1, base = 2
    assert lr_at(10, 0.0, 2.0, 10, "cosine", 0.1) == pytest.approx(2.0)  # p = 0
    assert lr_at(60, 0.5, 2.0, 10, "cosine", 0.1) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # p = 0.5 -> 1.1
    assert lr_at(35, 0.25, 2.0, 10, "cosine", 0.1) == pytest.approx(2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
    assert lr_at(110, 1.0, 2.0, 10, "cosine", 0.1) == pytest.approx(0.2)  # p = 1: the floor
    assert lr_at(500, 4.0, 2.0, 10, "cosine", 0.1) == pytest.approx(0.2)  # past the end it stays there
    assert lr_at(5, 0.5, 2.0, 10, "cosine", 0.1) == pytest.approx(1.2)  # warm-up wins: 2 * 6 / 10


def test_lr_constant_and_no_warmup():
    assert lr_at(0, 0.0, 3e-4, 0, "constant", 0.1) == 3e-4
    assert lr_at(9, 0.9, 3e-4, 0, "constant", 0.1) == 3e-4
    assert lr_at(0, 0.0, 1.0, 0, "cosine", 0.0) == pytest.approx(1.0)


def test_progress_fraction_by_steps_and_by_time():
    cfg = SimpleNamespace(steps=110, time_budget_min=0.0, time_budget_clock="wall", optim=SimpleNamespace(warmup_steps=10))
    fake = SimpleNamespace(cfg=cfg, step=60, elapsed=0.0)
    assert Pretrainer.progress_fraction(fake) == pytest.approx(0.5)  # (60 - 10) / (110 - 10)
    # a 10-minute budget of which 9 minutes are spent is ahead of the steps (0.9 > 60 / 110): the
    # time fraction of the whole run, mapped as the steps are: (0.9 * 110 - 10) / 100 = 0.89
    cfg.time_budget_min = 10.0
    fake.elapsed = 540.0
    assert Pretrainer.progress_fraction(fake) == pytest.approx(0.89)
    # 1 minute of the 10 spent is behind the steps (0.1 < 60 / 110): the steps alone, exactly
    fake.elapsed = 60.0
    assert Pretrainer.progress_fraction(fake) == (60 - 10) / (110 - 10)
    # a CPU-clock budget reads the CPU seconds: 9 of its 10 minutes spent, though 1 minute of wall
    # time, gives 0.89 as above (the wall clock would give the steps' 0.5, and the cosine would not
    # reach its floor before the CPU budget stops the run)
    cfg.time_budget_clock = "cpu"
    fake.elapsed_cpu = 540.0
    assert Pretrainer.progress_fraction(fake) == pytest.approx(0.89)


def test_a_budget_that_will_not_bind_leaves_the_schedule_to_the_steps():
    """The quickstart's pretraining: 200 steps, 50 of warm-up, a 180 s cap it ends well inside.
    At step 60 after 42 s the time fraction 42 / 180 = 0.233 is behind the steps' 60 / 200 = 0.3,
    so the progress is (60 - 50) / 150 = 0.0667 on a fast machine or a slow one; taking the larger of
    the post-warm-up step fraction and the time fraction, it was 0.233, which depended on the speed."""
    assert progress_after_warmup(60, 200, 50, 42 / 180) == (60 - 50) / 150
    assert progress_after_warmup(60, 200, 50, 50 / 180) == (60 - 50) / 150
    # a machine 1.5x slower is ahead of its steps: 63 / 180 = 0.35 > 0.3 -> (0.35 * 200 - 50) / 150
    assert progress_after_warmup(60, 200, 50, 63 / 180) == pytest.approx((0.35 * 200 - 50) / 150)
    # the budget spent: the floor of the cosine, whatever the step
    assert progress_after_warmup(120, 200, 50, 1.0) == pytest.approx(1.0)
    # where the two fractions meet (100 / 200 = 0.5) both rules give (100 - 50) / 150: continuous
    assert progress_after_warmup(100, 200, 50, 0.5) == 50 / 150
    assert progress_after_warmup(100, 200, 50, 0.5 + 1e-9) == pytest.approx(50 / 150)
    # no warm-up: the plain fractions, 30 / 100 by steps and 0.4 by time
    assert progress_after_warmup(30, 100, 0, 0.2) == 0.3
    assert progress_after_warmup(30, 100, 0, 0.4) == pytest.approx(0.4)


def test_data_order_covers_every_image_once_per_epoch():
    # next_indices only needs the batch size, the training set size and the generator state
    fake = SimpleNamespace(cfg=SimpleNamespace(batch_size=4), train_set=range(10), gen=torch.Generator().manual_seed(0), epoch=0, pos=0)
    fake.perm = torch.randperm(10, generator=fake.gen)
    drawn = torch.cat([Pretrainer.next_indices(fake) for _ in range(5)])  # 20 indices = 2 epochs
    assert drawn.shape == (20,)
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    assert fake.epoch == 1 and fake.pos == 10
    # a batch larger than the data set spans epochs too
    fake.cfg.batch_size = 23
    assert Pretrainer.next_indices(fake).shape == (23,)


# ---------------------------------------------------------------------------------------------
# a tiny run
# ---------------------------------------------------------------------------------------------
def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> SimpleNamespace:
    """One uninterrupted 6-step tiny run (shared: the run test inspects it, the resume test compares to it).

    The faces folder holds one unreadable file, which ``data.skip_bad`` skips and reports.
    """
    root = tmp_path_factory.mktemp("straight")
    write_tiny_faces(root / "faces")
    (root / "faces" / "zz_broken.png").write_bytes(b"not a png")  # sorts last: a training file
    make = lambda out, *extra: load_config(  # noqa: E731
        PretrainConfig, None, tiny_overrides(root / "faces", root / out) + ["data.skip_bad=true", *extra]
    )
    trainer = Pretrainer(make("run"), progress=False)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = trainer.run()
    return SimpleNamespace(trainer=trainer, result=result, stdout=stdout.getvalue(), make_cfg=make)


def test_tiny_run_writes_checkpoints_logs_and_validation(straight):
    trainer, result = straight.trainer, straight.result
    cfg = trainer.cfg
    assert len(trainer.train_set) == 12 - 2 and trainer.val is not None and len(trainer.val.names) == 2
    run = Path(cfg.out_dir)

    assert result["step"] == 6 and result["checkpoint"] == str(run / "step_000006")
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_000003", "step_000006"]
    assert ckpt_io.find_checkpoint(run) == run / "step_000006"
    assert (run / "config.yaml").is_file()

    records = _records(run)
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6]  # log_every = 2
    for r in losses:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["loss"] == pytest.approx(r["diffusion_loss"] + r["stage1_loss"], rel=1e-5)  # stage1_loss_weight = 1
        assert r["lr"] > 0 and math.isfinite(r["grad_norm"])
    vals = [r for r in records if "val_psnr" in r]
    assert len(vals) == 1 and vals[0]["step"] == 6  # val_every = 0: once, at the end
    for key in ("val_psnr", "val_ssim", "val_stage1_psnr", "val_stage1_ssim", "val_bicubic_psnr", "val_bicubic_ssim"):
        assert math.isfinite(vals[0][key]) and result[key] == vals[0][key]
    assert -1 <= vals[0]["val_ssim"] <= 1

    # the checkpoint rebuilds alone: its config is the run's config, and the EMA file is present
    ckpt = run / "step_000006"
    assert from_dict(PretrainConfig, ckpt_io.load_config_dict(ckpt)) == cfg
    assert ckpt_io.load_meta(ckpt)["kind"] == "pretrain" and ckpt_io.load_meta(ckpt)["step"] == 6
    ema = ckpt_io.load_file(str(ckpt / "ema.safetensors"))
    assert ema.keys() == trainer.policy.state_dict().keys()
    state = ckpt_io.load_state(ckpt)
    assert state["step"] == 6 and len(state["history"]) == len(records)

    assert "skipped 1 unreadable image(s)" in straight.stdout and "zz_broken.png" in straight.stdout


def _assert_optimizer_states_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for idx in a["state"]:
        sa, sb = a["state"][idx], b["state"][idx]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), (idx, k)


def test_resume_is_exact(straight, monkeypatch):
    ref = straight.trainer  # 6 steps without a break

    # the same run, killed after its step-3 checkpoint (ckpt_every = 3) ...
    cfg = straight.make_cfg("interrupted")
    original_step = Pretrainer.train_step

    def dies_after_step_3(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Pretrainer, "train_step", dies_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        Pretrainer(cfg, progress=False).run()
    monkeypatch.undo()
    assert ckpt_io.find_checkpoint(cfg.out_dir).name == "step_000003"

    # ... and resumed by a fresh trainer from the run folder
    resumed = Pretrainer(cfg, resume=cfg.out_dir, progress=False)
    assert resumed.step == 3
    with contextlib.redirect_stdout(io.StringIO()):
        resumed_result = resumed.run()

    for k, v in ref.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    for k, v in ref.ema.shadow.items():
        assert torch.equal(v, resumed.ema.shadow[k]), f"ema {k}"
    _assert_optimizer_states_equal(ref.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert torch.equal(ref.gen.get_state(), resumed.gen.get_state())
    assert torch.equal(ref.perm, resumed.perm)
    assert (ref.step, ref.epoch, ref.pos) == (resumed.step, resumed.epoch, resumed.pos)
    # the saved files agree byte for byte, and so does validation
    for name in ("model.safetensors", "ema.safetensors"):
        a = Path(ref.cfg.out_dir) / "step_000006" / name
        assert a.read_bytes() == (Path(cfg.out_dir) / "step_000006" / name).read_bytes(), name
    drop_path = lambda r: {k: v for k, v in r.items() if k != "checkpoint"}  # noqa: E731
    assert drop_path(straight.result) == drop_path(resumed_result)
    # the last training log record averages the same two steps (5 and 6) in both runs
    last = [r for r in _records(Path(cfg.out_dir)) if "loss" in r][-1]
    ref_last = [r for r in _records(Path(ref.cfg.out_dir)) if "loss" in r][-1]
    assert last["step"] == ref_last["step"] == 6 and last["loss"] == ref_last["loss"]


def test_resume_into_a_different_architecture_names_the_mismatch(tiny_pretrain_cfg, tiny_run):
    from lrpo.runs import RunFolderError

    cfg = tiny_pretrain_cfg("policy.base_channels=16", out="wider")
    with pytest.raises(RunFolderError, match=r"policy.base_channels: checkpoint 8, now 16"):
        Pretrainer(cfg, resume=tiny_run, progress=False)
    with pytest.raises(ckpt_io.CheckpointError, match="shape mismatches"):
        Pretrainer(cfg, resume=tiny_run, progress=False, allow_changes=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_pretrain_cfg, monkeypatch):
    cfg = tiny_pretrain_cfg("ckpt_every=2")
    calls = {"n": 0}
    real_target = trainer_mod.training_target

    def target_goes_nan(x0, noise, a_t, prediction):
        calls["n"] += 1
        out = real_target(x0, noise, a_t, prediction)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(trainer_mod, "training_target", target_goes_nan)
    trainer = Pretrainer(cfg, progress=False)
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        trainer.run()

    run = Path(cfg.out_dir)
    assert ckpt_io.find_checkpoint(run) == run / "step_000002"
    assert (run / "latest").read_text().strip() == "step_000002"
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_000002"]
    # the NaN step never reached the optimiser: the weights in memory are the checkpoint's, all finite
    reloaded = trainer_mod.build_policy(cfg.policy)
    ckpt_io.load_weights(reloaded, run)
    for k, v in reloaded.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, trainer.policy.state_dict()[k]), k
    assert ckpt_io.load_state(run)["step"] == 2


def test_time_budget_stops_early_and_still_saves(tiny_pretrain_cfg):
    # 1e-7 min = 6 microseconds: exhausted by the first step
    cfg = tiny_pretrain_cfg("time_budget_min=1e-7", "steps=1000")
    result = Pretrainer(cfg, progress=False).run()
    assert result["step"] == 1
    run = Path(cfg.out_dir)
    assert ckpt_io.find_checkpoint(run) == run / "step_000001"
    assert "val_psnr" in result  # the end-of-run validation still happens
    assert ckpt_io.load_state(run)["elapsed"] > 1e-7 * 60


def test_bf16_training_step_keeps_fp32_master_weights(tiny_pretrain_cfg):
    trainer = Pretrainer(tiny_pretrain_cfg("precision=bf16"), progress=False)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    stats = trainer.train_step()
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.policy.state_dict().items())


def test_pretraining_runs_its_convolutions_channels_last_with_the_default_layouts_gradients(tiny_pretrain_cfg):
    """Pretraining is one process at one batch size, so it takes channels-last's faster CPU kernels
    (PixelPolicy.use_channels_last): every convolution of a step sees channels-last activations, and
    the step's loss and gradients equal a default-layout policy's up to fp32 rounding (compared before
    the optimiser, whose first Adam step would turn a last-bit difference in a near-zero gradient
    into a whole step)."""
    fast = Pretrainer(tiny_pretrain_cfg("precision=fp32", out="fast"), progress=False)
    plain = Pretrainer(tiny_pretrain_cfg("precision=fp32", out="plain"), progress=False)
    plain.policy.unet.channels_last = False
    if plain.policy.stage1 is not None:
        plain.policy.stage1.channels_last = False
    layouts: list[bool] = []
    hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
             for m in fast.policy.modules() if isinstance(m, torch.nn.Conv2d)]
    for trainer in (fast, plain):
        trainer.optimizer.step = lambda: None  # keep the gradients and the weights as the backward left them
    fast_stats = fast.train_step()
    for h in hooks:
        h.remove()
    assert layouts and all(layouts)
    plain_stats = plain.train_step()
    assert fast_stats["loss"] == pytest.approx(plain_stats["loss"], rel=1e-5)
    for (name, a), b in zip(fast.policy.named_parameters(), plain.policy.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sigint_finishes_the_step_checkpoints_and_resume_is_exact(straight, monkeypatch):
    """SIGINT during step 2 (ckpt_every = 3, so no checkpoint is due): the step finishes, step_000002
    is written, Interrupted is raised; the resumed run equals the 6 steps straight."""
    import os
    import signal

    from lrpo.runs import Interrupted

    ref = straight.trainer
    cfg = straight.make_cfg("sigint")
    original_step = Pretrainer.train_step

    def signalled_in_step_2(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self)

    monkeypatch.setattr(Pretrainer, "train_step", signalled_in_step_2)
    with pytest.raises(Interrupted) as err, contextlib.redirect_stdout(io.StringIO()):
        Pretrainer(cfg, progress=False).run()
    monkeypatch.undo()
    assert err.value.checkpoint.name == "step_000002" == ckpt_io.find_checkpoint(cfg.out_dir).name
    resumed = Pretrainer(cfg, resume=cfg.out_dir, progress=False)
    assert resumed.step == 2
    with contextlib.redirect_stdout(io.StringIO()):
        resumed.run()
    for k, v in ref.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    _assert_optimizer_states_equal(ref.optimizer.state_dict(), resumed.optimizer.state_dict())


def test_a_resumed_runs_time_budget_counts_that_invocation(tiny_pretrain_cfg):
    """time_budget_min means the same in pretrain as in train: minutes of this invocation. Before,
    a resume whose budget was below the run's elapsed time stopped at once, with no step."""
    first = tiny_pretrain_cfg("steps=2")
    Pretrainer(first, progress=False).run()
    run = Path(first.out_dir)
    spent = ckpt_io.load_state(run)["elapsed"]
    # a budget of a tenth of what the first 2 steps took: one step of this invocation exhausts it
    resumed = Pretrainer(tiny_pretrain_cfg("steps=10", f"time_budget_min={spent / 600}"), resume=run, progress=False,
                         allow_changes=True)
    result = resumed.run()
    assert result["step"] == 3


def test_cpu_clock_budget_counts_this_processs_cpu(tiny_pretrain_cfg, monkeypatch):
    """time_budget_clock=cpu stops on CPU seconds: with a CPU clock that advances 1 s per call (the
    start reads 0), the checks before steps read 1, 2, 3 s: a 3-second budget allows 2 steps."""
    from lrpo.pretrain import trainer as pretrain_mod

    ticks = iter(range(10**6))
    monkeypatch.setattr(pretrain_mod, "_cpu_seconds", lambda: float(next(ticks)))
    cfg = tiny_pretrain_cfg("steps=50", "time_budget_min=0.05", "time_budget_clock=cpu")
    trainer = Pretrainer(cfg, progress=False)
    assert trainer.run()["step"] == 2
    # the schedule's CPU seconds are the last check's, 3 s, and the checkpoint keeps them for a resume
    assert trainer.elapsed_cpu == 3.0
    assert ckpt_io.load_state(ckpt_io.find_checkpoint(cfg.out_dir))["elapsed_cpu"] == 3.0
