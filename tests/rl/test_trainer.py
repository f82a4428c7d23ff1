"""End-to-end checks of the LRPO trainer on a tiny pixel policy (16 px, 4 DDIM steps).

What must hold:
  * the gradient points the right way: a brightness reward goes up, and down with the sign flipped;
  * 2 epochs straight == 1 epoch, stop, resume 1 more (weights and optimiser state, bit for bit);
  * NaN in a reward stops the run naming the term and epoch, the last checkpoint untouched;
  * 2 processes (gloo) see the same groups, rewards, global std and final weights as 1 process.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from lrpo.checkpoint import save_checkpoint
from lrpo.config import DiffusionConfig, PolicyConfig, from_dict, to_dict
from lrpo.rl.config import LRPOConfig
from lrpo.policies.pixel_unet import PixelPolicy
from lrpo.rl import trainer as trainer_mod
from lrpo.rl.trainer import LRPOTrainer, NonFiniteError

from tests.conftest import CaptionLengthReward, register_caption_length_reward

RES = 16


def _faces(folder: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(n):
        base = rng.uniform(0.2, 0.6, size=3)
        img = base[None, None] * (0.6 + 0.4 * yy[..., None]) + 0.1 * rng.standard_normal((32, 32, 3))
        ellipse = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1
        img[ellipse] += 0.2
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"face_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lrpo")
    faces = _faces(root / "faces")
    # an untrained but valid "pretrained" checkpoint: the trainer only needs weights + config
    pcfg = PolicyConfig(resolution=RES, base_channels=8, channel_mults=(1, 2), stage1="none", prediction="v")
    torch.manual_seed(0)
    policy = PixelPolicy(pcfg)
    with torch.no_grad():  # make the zero-initialised output layer non-trivial
        policy.unet.out.weight.normal_(0, 0.02)
    dcfg = DiffusionConfig(sample_steps=4)
    save_checkpoint(root / "base", 0, policy, {"policy": to_dict(pcfg), "diffusion": to_dict(dcfg)}, {}, kind="pretrain")
    return faces, root / "base"


def make_cfg(faces: Path, base: Path, out: Path, **over) -> LRPOConfig:
    raw = dict(
        init_checkpoint=str(base),
        out_dir=str(out),
        device="cpu",
        epochs=2,
        group_size=4,
        groups_per_epoch=4,
        rollout_groups_per_batch=4,
        sample_steps=4,
        eval_eta=0.0,
        train_fraction=1.0,
        update_mode="accumulate",
        minibatch_size=16,
        timesteps_per_forward=4,
        lr=1e-3,
        clip_range=0.2,
        reg_weight=0.0,
        data=dict(hq=str(faces), resolution=RES, val_count=2),
        degradation=dict(blur_sigma=[0.1, 1.0], downscale=[1.0, 2.0], noise_sigma=[0.0, 2.0], jpeg_quality=[80, 99]),
        reward=dict(preset="", terms={"brightness": {"weight": 1.0}}),
        # fp32: the tests here compare exact maths (one process against two, straight against
        # resumed); the bf16 and compiled modes' invariants are in test_trainer_numerics.py
        precision="fp32",
    )
    for k, v in over.items():
        raw[k] = v
    cfg = from_dict(LRPOConfig, raw)
    cfg.validate()
    return cfg


def test_brightness_reward_rises_and_falls_with_flipped_sign(setup_dirs, tmp_path, monkeypatch):
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "up", epochs=4)
    up = LRPOTrainer(cfg, progress=False)
    before = up.evaluate()["eval_reward"]
    up.run()
    after_up = up.evaluate()["eval_reward"]

    # flip the advantage sign: the same update must now lower the reward
    real = trainer_mod.step_advantages
    monkeypatch.setattr(trainer_mod, "step_advantages", lambda a, w, clip: -real(a, w, clip=clip))
    down = LRPOTrainer(make_cfg(faces, base, tmp_path / "down", epochs=4), progress=False)
    down.run()
    after_down = down.evaluate()["eval_reward"]
    # brightness is in [0, 1]; 4 Adam steps at lr 1e-3 move it by several hundredths
    assert after_up > before + 0.01, (before, after_up)
    assert after_down < before - 0.01, (before, after_down)


def _state_equal(a: LRPOTrainer, b: LRPOTrainer) -> None:
    for (k, va), vb in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(va, vb), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)


def assert_resume_equals(straight: LRPOTrainer, faces: Path, base: Path, folder: Path, **over) -> None:
    """1 epoch in ``folder``, then 1 more with --resume, ends where ``straight`` (2 epochs, the same
    settings ``over``) ended: weights and AdamW state bit for bit."""
    LRPOTrainer(make_cfg(faces, base, folder, epochs=1, **over), progress=False).run()
    resumed = LRPOTrainer(make_cfg(faces, base, folder, epochs=2, **over), resume=folder, progress=False)
    resumed.run()
    _state_equal(straight, resumed)


def test_resume_is_exact(setup_dirs, tmp_path):
    faces, base = setup_dirs
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "straight", reg_weight=1e-2), progress=False)
    straight.run()

    first = LRPOTrainer(make_cfg(faces, base, tmp_path / "split", epochs=1, reg_weight=1e-2), progress=False)
    first.run()
    resumed = LRPOTrainer(make_cfg(faces, base, tmp_path / "split", epochs=2, reg_weight=1e-2), resume=tmp_path / "split", progress=False)
    assert resumed.epoch == 1
    resumed.run()
    _state_equal(straight, resumed)
    assert [r["reward_mean"] for r in straight.history] == [r["reward_mean"] for r in resumed.history]


def test_nan_reward_stops_and_keeps_checkpoint(setup_dirs, tmp_path, monkeypatch):
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "nan", epochs=2)
    tr = LRPOTrainer(cfg, progress=False)
    tr.run()  # 2 good epochs, checkpoint step_000002
    good = (tmp_path / "nan" / "latest").read_text()
    cfg3 = make_cfg(faces, base, tmp_path / "nan", epochs=3)
    tr3 = LRPOTrainer(cfg3, resume=tmp_path / "nan", progress=False)
    original = tr3.reward.__class__.__call__

    def poisoned(self, inp):
        out = original(self, inp)
        out.details["brightness"][0] = float("nan")
        return out

    monkeypatch.setattr(tr3.reward.__class__, "__call__", poisoned)
    with pytest.raises(NonFiniteError, match=r"brightness.*epoch 2"):
        tr3.run()
    assert (tmp_path / "nan" / "latest").read_text() == good
    reloaded = LRPOTrainer(cfg3, resume=tmp_path / "nan", progress=False)
    _state_equal(tr, reloaded)


def test_gt_regulariser_raises_gt_likelihood(setup_dirs, tmp_path):
    """With lambda large and no reward signal (all-equal rewards), training increases the GT path's
    log-density under the policy: the regulariser's gradient has the right sign."""
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "reg", epochs=3, reg_weight=1.0, reg_last_k=4, reg_tau=40.0,
                   reward=dict(preset="", terms={"brightness": {"weight": 1.0}}))
    tr = LRPOTrainer(cfg, progress=False)
    tr.run()
    dens = [r["gt_log_density"] for r in tr.history]
    assert dens[-1] > dens[0], dens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = from_dict(LRPOConfig, cfg_dict)
    tr = LRPOTrainer(cfg, progress=False)
    batch = tr.collect(0)
    torch.save({"group_ids": batch.group_ids}, Path(out) / f"groups_rank{rank}.pt")
    tr.run()
    torch.save({"state": tr.policy.state_dict(), "history": tr.history}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_processes_match_one(setup_dirs, tmp_path):
    faces, base = setup_dirs
    # one minibatch per process holding all its trajectories: the all-reduced gradient then equals
    # the single-process gradient over the whole batch (mean of equal-sized means)
    common = dict(epochs=1, groups_per_epoch=4, group_size=4, rollout_groups_per_batch=2, reg_weight=1e-2,
                  reward=dict(preset="", terms={"ssim": {"weight": 0.5}, "brightness": {"weight": 0.5}}))
    single = LRPOTrainer(make_cfg(faces, base, tmp_path / "single", minibatch_size=16, **common), progress=False)
    single_groups = single.collect(0).group_ids
    single.run()

    multi_cfg = make_cfg(faces, base, tmp_path / "multi", minibatch_size=8, **common)
    mp.start_processes(_worker, args=(2, _free_port(), to_dict(multi_cfg), str(tmp_path)), nprocs=2, join=True, start_method="spawn")

    groups = [torch.load(tmp_path / f"groups_rank{r}.pt")["group_ids"] for r in range(2)]
    # every group whole on exactly one rank, together exactly the single-process groups
    for g in groups:
        ids, counts = g.unique(return_counts=True)
        assert (counts == 4).all()
    assert set(groups[0].tolist()).isdisjoint(groups[1].tolist())
    assert sorted(torch.cat(groups).tolist()) == sorted(single_groups.tolist())

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    h_single, h_multi = single.history[-1], r0["history"][-1]
    for key in ("reward_mean", "reward_std", "adv_std_of_rewards", "dropped_groups", "trajectories"):
        assert h_multi[key] == pytest.approx(h_single[key], rel=1e-6, abs=1e-9), key
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks diverged at {k}"
        # one Adam step of lr 1e-3: float summation order may differ, the update direction may not
        assert torch.allclose(v, single.policy.state_dict()[k], atol=1e-5), k
    # only rank 0 wrote checkpoints and logs
    assert (tmp_path / "multi" / "latest").is_file()
    assert len((tmp_path / "multi" / "log.jsonl").read_text().splitlines()) == 1


def test_guard_stops_and_rolls_back(setup_dirs, tmp_path):
    """A brightness reward at lr 1e-3 brightens the faces, so PSNR to GT falls a little more each
    epoch. With a 1 % tolerance the first epoch passes (saved as `best`), a later one fails: training
    stops early, the policy is rolled back and `latest` names the best guarded checkpoint."""
    import json

    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "guard", epochs=10,
                   guard=dict(every=1, metrics=["psnr"], tolerance=0.01, action="rollback"))
    tr = LRPOTrainer(cfg, progress=False)
    tr.run()
    log = [json.loads(line) for line in (tmp_path / "guard" / "log.jsonl").read_text().splitlines()]
    start = log[0]["guard_psnr"]  # the baseline, before any update
    violated = [r for r in log if r.get("guard_violations")]
    assert violated and tr.epoch < 10, [r.get("guard_psnr") for r in log]
    assert violated[0]["guard_psnr"] < start * 0.99
    assert tr.best is not None and tr.best[0] < tr.epoch
    assert (tmp_path / "guard" / "latest").read_text().strip() == "best"
    assert log[-1]["rolled_back_to_epoch"] == tr.best[0]
    # the in-memory policy now holds the best checkpoint's weights
    from lrpo.checkpoint import load_weights
    import copy

    ref = copy.deepcopy(tr.policy)
    load_weights(ref, tmp_path / "guard" / "best")
    for a, b in zip(ref.state_dict().values(), tr.policy.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_names_the_term_and_epoch(setup_dirs, tmp_path, monkeypatch):
    faces, base = setup_dirs
    real = trainer_mod.ppo_clip_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(trainer_mod, "ppo_clip_loss", poisoned)
    tr = LRPOTrainer(make_cfg(faces, base, tmp_path / "nanloss", epochs=1), progress=False)
    with pytest.raises(NonFiniteError, match=r"ppo_loss not finite in epoch 0"):
        tr.run()
    assert not (tmp_path / "nanloss" / "latest").exists()  # nothing half-trained was saved


def test_trainer_drives_the_latent_policy(setup_dirs, tmp_path):
    """The SD2.1 + ControlNet policy (tiny random networks) goes through the same trainer: rollouts,
    reward, PPO + GT term, a checkpoint holding only the ControlNet, which rebuilds the policy."""
    import yaml

    from lrpo.config import DiffusionConfig
    from lrpo.policies.loading import load_policy
    from lrpo.policies.latent_config import LatentPolicyConfig

    faces, _ = setup_dirs
    arch = LatentPolicyConfig.preset("tiny")
    section = to_dict(arch)
    section["random_init"] = True
    policy_file = tmp_path / "policy-tiny.yaml"
    policy_file.write_text(yaml.safe_dump({"policy": section, "diffusion": to_dict(DiffusionConfig(sample_steps=4))}))
    cfg = make_cfg(faces, policy_file, tmp_path / "latent", epochs=1, group_size=2, groups_per_epoch=2,
                   rollout_groups_per_batch=2, minibatch_size=4, lr=1e-4, reg_weight=1e-2, reg_last_k=2,
                   data=dict(hq=str(faces), resolution=arch.resolution, val_count=2))
    tr = LRPOTrainer(cfg, progress=False)
    before = [p.detach().clone() for p in tr.params]
    assert all(n.startswith("controlnet.") for n, p in tr.policy.named_parameters() if p.requires_grad)
    tr.run()
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.params))  # the ControlNet moved
    assert "reg" in tr.history[-1] and math.isfinite(tr.history[-1]["reward_mean"])
    reloaded, _, _ = load_policy(tmp_path / "latent")
    for a, b in zip(reloaded.trainable_parameters(), tr.policy.trainable_parameters()):
        assert torch.equal(a, b.detach())


# ----------------------------------------------------------------------------------------------
# the shipped defaults: per-timestep updates, train_fraction 0.99, K < trained steps
# ----------------------------------------------------------------------------------------------
DEFAULTS = dict(update_mode="per_timestep", train_fraction=0.99, minibatch_size=8, reg_weight=1e-2, reg_last_k=2)


def _dropout_base(root: Path) -> Path:
    """A pixel policy with dropout 0.5 in every ResBlock (the setting where train-mode updates broke)."""
    pcfg = PolicyConfig(resolution=RES, base_channels=8, channel_mults=(1, 2), stage1="none", prediction="v", dropout=0.5)
    torch.manual_seed(1)
    policy = PixelPolicy(pcfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():  # non-trivial weights everywhere, so dropout matters
            if p.ndim > 1:
                p.normal_(0, 0.1)
    save_checkpoint(root, 0, policy, {"policy": to_dict(pcfg), "diffusion": to_dict(DiffusionConfig(sample_steps=4))}, {}, kind="pretrain")
    return root


def test_first_step_ratio_is_one_with_dropout_and_shipped_defaults(setup_dirs, tmp_path):
    """Before the first optimiser step of an epoch nothing has changed, so log pi_theta recomputed
    by the update equals the rollout's log pi_old: ratio 1, nothing clipped, even with dropout on
    (the update runs the rollout's eval-mode function). With dropout in train mode the largest
    |log-ratio| was 0.34 against a clip range of 1e-4."""
    faces, _ = setup_dirs
    base = _dropout_base(tmp_path / "base")
    cfg = make_cfg(faces, base, tmp_path / "drop", epochs=2, clip_range=1e-4, **DEFAULTS)
    assert cfg.update_mode == LRPOConfig.update_mode and cfg.train_fraction == LRPOConfig.train_fraction
    tr = LRPOTrainer(cfg, progress=False)
    assert tr.n_train == 3 and tr.reg_steps == [1, 2]  # floor(0.99 * 4) = 3 trained, the last 2 regularised
    tr.run()
    for rec in tr.history:
        assert rec["first_max_abs_log_ratio"] == 0.0, rec
        assert rec["first_clip_fraction"] == 0.0, rec
    # later steps did move the policy (per-timestep updates at lr 1e-3): the check is not vacuous
    assert tr.history[-1]["approx_kl"] > 0


def test_logged_gt_term_is_the_mean_over_the_regularised_steps(setup_dirs, tmp_path, monkeypatch):
    """`reg` and `gt_log_density` are recorded on the K regularised steps only; the log is their mean
    (per-timestep mode: one record per (minibatch, step) in reg_steps), not their sum divided by every
    trained step (which diluted them by K / n_train = 2/3 here)."""
    faces, base = setup_dirs
    seen: list[float] = []
    real = trainer_mod.gt_likelihood_regularizer

    def recording(m, tau):
        out = real(m, tau)
        seen.append(out.item())
        return out

    monkeypatch.setattr(trainer_mod, "gt_likelihood_regularizer", recording)
    # diagnostics off: their one extra forward (lrpo.rl.diagnostics) would add a call to count
    cfg = make_cfg(faces, base, tmp_path / "reg", epochs=1, diagnostics=False, **{**DEFAULTS, "minibatch_size": 16})
    tr = LRPOTrainer(cfg, progress=False)
    tr.run()
    assert len(seen) == 2  # one minibatch x the 2 regularised steps
    assert tr.history[-1]["reg"] == pytest.approx(sum(seen) / 2, rel=1e-12)


@pytest.mark.parametrize("gt_path", ["marginal", "compounded"])
def test_resume_is_exact_with_shipped_defaults(setup_dirs, tmp_path, gt_path):
    """1 + 1 epochs with a resume == 2 straight, in per-timestep mode with train_fraction 0.99 and
    K < n_train, for both GT paths."""
    faces, base = setup_dirs
    kw = dict(DEFAULTS, gt_path=gt_path)
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "straight", **kw), progress=False)
    straight.run()
    LRPOTrainer(make_cfg(faces, base, tmp_path / "split", epochs=1, **kw), progress=False).run()
    resumed = LRPOTrainer(make_cfg(faces, base, tmp_path / "split", **kw), resume=tmp_path / "split", progress=False)
    resumed.run()
    _state_equal(straight, resumed)
    assert [r["reg"] for r in straight.history] == [r["reg"] for r in resumed.history]


# ----------------------------------------------------------------------------------------------
# captions reach the reward; missing ones stop the run before the first rollout
# ----------------------------------------------------------------------------------------------
def _caption_reward_cfg(faces, base, out, **data):
    register_caption_length_reward()
    return make_cfg(faces, base, out, epochs=1, data=dict(hq=str(faces), resolution=RES, val_count=2, **data),
                    reward=dict(preset="", terms={"test_caption_length": {"weight": 0.5}, "brightness": {"weight": 0.5}}))


def test_missing_captions_stop_before_the_first_rollout(setup_dirs, tmp_path, monkeypatch):
    from lrpo.data.captions import CaptionError

    faces, base = setup_dirs
    monkeypatch.setattr(LRPOTrainer, "collect", lambda *a: pytest.fail("rolled out without captions"))
    with pytest.raises(CaptionError, match=r"test_caption_length.*10 of 10|test_caption_length.*8 of 8") as err:
        LRPOTrainer(_caption_reward_cfg(faces, base, tmp_path / "nocap"), progress=False)
    msg = str(err.value)
    assert "face_02.png" in msg and "sidecar" in msg and "data.captions" in msg and "default_caption" in msg


def test_captions_from_sidecars_table_and_default_reach_the_reward(setup_dirs, tmp_path):
    import shutil

    faces_src, base = setup_dirs
    faces = tmp_path / "faces"
    shutil.copytree(faces_src, faces)
    for p in sorted(faces.glob("*.png"))[:5]:
        p.with_suffix(".txt").write_text(f"sidecar {p.stem}\n")
    table = tmp_path / "captions.csv"
    table.write_text('name,caption\nface_03.png,"table, with a comma"\nface_07,from table\n')
    cfg = _caption_reward_cfg(faces, base, tmp_path / "cap", captions=str(table), default_caption="a face")
    CaptionLengthReward.seen.clear()
    tr = LRPOTrainer(cfg, progress=False)
    # the table wins over a sidecar; the default fills in where neither exists
    assert tr.val_captions == ["sidecar face_00", "sidecar face_01"]
    assert tr.train_captions == ["sidecar face_02", "table, with a comma", "sidecar face_04", "a face", "a face",
                                 "from table", "a face", "a face"]
    tr.run()
    seen = {c for batch in CaptionLengthReward.seen for c in batch}
    assert "table, with a comma" in seen and seen <= set(tr.train_captions) | set(tr.val_captions)


# ----------------------------------------------------------------------------------------------
# the run lifecycle: interrupts keep the work, one run per folder, resume means the same run
# ----------------------------------------------------------------------------------------------
def _interrupt_at(monkeypatch, target: str, call: int, times: int = 1) -> None:
    """Send SIGINT to this process on the ``call``-th call of trainer_mod/LRPOTrainer ``target``."""
    import signal

    owner, name = (LRPOTrainer, target.split(".")[1]) if target.startswith("LRPOTrainer.") else (trainer_mod, target)
    real = getattr(owner, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


LIFECYCLE = dict(epochs=3, ckpt_every=5, rollout_groups_per_batch=2, **DEFAULTS)


@pytest.mark.parametrize(
    "target, call, kept_epoch",
    [
        ("sample_trajectories", 5, 1),  # calls: eval, 2 chunks of epoch 0, eval, epoch 1 chunk 1: dropped, epoch 1 kept
        ("LRPOTrainer.optimizer_step", 8, 2),  # epoch 1's update (6 steps per epoch): finished, epoch 2 kept
        ("LRPOTrainer.evaluate", 2, 1),  # evaluation after epoch 1
    ],
)
def test_sigint_checkpoints_the_last_completed_epoch_and_resume_is_exact(setup_dirs, tmp_path, monkeypatch, target, call, kept_epoch):
    from lrpo.checkpoint import find_checkpoint
    from lrpo.runs import Interrupted

    faces, base = setup_dirs
    straight = LRPOTrainer(make_cfg(faces, base, tmp_path / "straight", **LIFECYCLE), progress=False)
    straight.run(eval_every=1)

    with monkeypatch.context() as m:
        _interrupt_at(m, target, call)
        tr = LRPOTrainer(make_cfg(faces, base, tmp_path / "run", **LIFECYCLE), progress=False)
        with pytest.raises(Interrupted) as err:
            tr.run(eval_every=1)
    # the checkpoint exists although ckpt_every=5, and it is the last completed epoch
    assert find_checkpoint(tmp_path / "run").name == f"step_{kept_epoch:06d}" == err.value.checkpoint.name
    resumed = LRPOTrainer(make_cfg(faces, base, tmp_path / "run", **LIFECYCLE), resume=tmp_path / "run", progress=False)
    assert resumed.epoch == kept_epoch
    resumed.run(eval_every=1)
    _state_equal(straight, resumed)
    rewards = lambda h: [(r["epoch"], r["reward_mean"]) for r in h if "reward_mean" in r]  # noqa: E731
    assert rewards(straight.history) == rewards(resumed.history)


def test_second_sigint_stops_at_once_and_keeps_the_previous_checkpoint(setup_dirs, tmp_path, monkeypatch):
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "run", **{**LIFECYCLE, "ckpt_every": 1})
    _interrupt_at(monkeypatch, "LRPOTrainer.optimizer_step", 8, times=2)  # both in epoch 1's update
    tr = LRPOTrainer(cfg, progress=False)
    with pytest.raises(KeyboardInterrupt) as err:
        tr.run()
    from lrpo.runs import Interrupted

    assert not isinstance(err.value, Interrupted)
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000001"


def test_a_folder_holds_one_run(setup_dirs, tmp_path):
    import json

    from lrpo.runs import RunFolderError

    faces, base = setup_dirs
    LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2), progress=False).run()
    with pytest.raises(RunFolderError, match=r"already holds a run \(latest checkpoint step_000002\).*--resume.*--overwrite"):
        LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=1), progress=False)
    # a finished run asked to resume says it is complete and trains nothing
    done = LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2), resume=tmp_path / "run", progress=False)
    assert done.run()["complete"] is True and done.epoch == 2
    # --overwrite starts over: no old checkpoint, a log of this run only
    LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=1), progress=False, overwrite=True).run()
    assert sorted(p.name for p in (tmp_path / "run").glob("step_*")) == ["step_000001"]
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1]


def test_resume_refuses_changed_settings_unless_allowed(setup_dirs, tmp_path):
    import json

    from lrpo.runs import RunFolderError

    faces, base = setup_dirs
    LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=1), progress=False).run()
    with pytest.raises(RunFolderError, match=r"group_size: checkpoint 4, now 2; lr: checkpoint 0.001, now 0.0005"):
        LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2, lr=5e-4, group_size=2), resume=tmp_path / "run", progress=False)
    # budgets, logging, device and epochs may change
    LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2, ckpt_every=3, keep_last=1, time_budget_min=5.0),
                resume=tmp_path / "run", progress=False)
    tr = LRPOTrainer(make_cfg(faces, base, tmp_path / "run", epochs=2, lr=5e-4), resume=tmp_path / "run", progress=False,
                     allow_changes=True)
    tr.run()
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"epoch": 1, "config_changes": {"lr": [0.001, 0.0005]}} in log


def test_rollback_on_the_first_guarded_epoch_restores_the_initial_policy(setup_dirs, tmp_path):
    """A guard that fails at once (tolerance 0 on PSNR, which a brightness reward lowers) rolls back to
    the start: `latest` names `best`, whose weights are the initial policy's, as is the policy in memory."""
    import copy

    from lrpo.checkpoint import find_checkpoint, load_weights

    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "guard", epochs=5, guard=dict(every=1, metrics=["psnr"], tolerance=0.0, action="rollback"))
    tr = LRPOTrainer(cfg, progress=False)
    initial = copy.deepcopy(tr.policy.state_dict())
    tr.run()
    assert tr.epoch == 1 and tr.best == (0, tr.history[0]["eval_reward"])
    assert find_checkpoint(tmp_path / "guard").name == "best"
    ref = copy.deepcopy(tr.policy)
    load_weights(ref, tmp_path / "guard")
    for k, v in initial.items():
        assert torch.equal(ref.state_dict()[k], v) and torch.equal(tr.policy.state_dict()[k], v), k


def test_uneven_kept_samples_across_processes_weigh_like_one_process(setup_dirs, tmp_path):
    """Rank 1's groups all have equal rewards (dropped), rank 0 keeps its own: every kept sample must
    weigh as in one process holding them all. (Averaging per-rank means halved the step here.)"""
    from lrpo.data.datasets import FaceImageSet
    from lrpo.data.groups import GroupSampler

    faces, base = setup_dirs
    names = FaceImageSet(faces, resolution=RES).split(2)[0].names
    rank1 = {names[g.index] for g in GroupSampler(len(names), 4, 4, 0, rank=1, world_size=2).groups(0)}
    rank0 = {names[g.index] for g in GroupSampler(len(names), 4, 4, 0, rank=0, world_size=2).groups(0)}
    assert rank0 - rank1, "the test needs rank 0 to keep a group"
    common = dict(epochs=1, groups_per_epoch=4, group_size=4, rollout_groups_per_batch=2, reg_weight=1e-2,
                  reward=dict(preset="", terms={"test_gated_brightness": {"weight": 1.0, "constant_for": sorted(rank1)}}))
    single = LRPOTrainer(make_cfg(faces, base, tmp_path / "single", minibatch_size=16, **common), progress=False)
    single.run()
    assert 1 <= single.history[-1]["dropped_groups"] < 4

    multi_cfg = make_cfg(faces, base, tmp_path / "multi", minibatch_size=8, **common)
    mp.start_processes(_worker, args=(2, _free_port(), to_dict(multi_cfg), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["history"][-1]["dropped_groups"] == single.history[-1]["dropped_groups"]
    # logged statistics weigh processes by their kept samples (rank 1 recorded none)
    for key in ("ppo_loss", "clip_fraction", "reg", "gt_log_density"):
        assert r0["history"][-1][key] == pytest.approx(single.history[-1][key], rel=1e-3, abs=1e-7), key
    initial = LRPOTrainer(make_cfg(faces, base, tmp_path / "fresh", **common), progress=False).policy.state_dict()
    moved = max(float((single.policy.state_dict()[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-5  # the update did something, so equality below is not trivial
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks diverged at {k}"
        # equal up to float summation order; a halved step would differ by about moved / 2
        assert torch.allclose(v, single.policy.state_dict()[k], atol=1e-6), k


def _nan_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    """Rank 1's PPO loss turns NaN; both ranks must stop with the same message naming rank 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if rank == 1:
        real = trainer_mod.ppo_clip_loss
        trainer_mod.ppo_clip_loss = lambda *a, **k: real(*a, **k)._replace(loss=real(*a, **k).loss * float("nan"))
    tr = LRPOTrainer(from_dict(LRPOConfig, cfg_dict), progress=False)
    try:
        tr.run()
        message = "finished"
    except NonFiniteError as e:
        message = str(e)
    (Path(out) / f"nan_rank{rank}.txt").write_text(message)
    torch.distributed.barrier()  # neither rank tears the group down while the other still uses it
    torch.distributed.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank(setup_dirs, tmp_path):
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "nan2", epochs=1, minibatch_size=8, rollout_groups_per_batch=2)
    ctx = mp.start_processes(_nan_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = 120
    while not ctx.join(timeout=5):
        deadline -= 5
        assert deadline > 0, "a rank hung waiting for the other"
    messages = [(tmp_path / f"nan_rank{r}.txt").read_text() for r in range(2)]
    assert "ppo_loss not finite in epoch 0" in messages[1] and "on rank 1" in messages[1]
    assert messages[0].startswith("stopping with rank 1: a non-finite value in epoch 0")
    assert not (tmp_path / "nan2" / "latest").exists()


def test_resuming_another_folders_checkpoint_claims_out_dir(setup_dirs, tmp_path):
    """`--resume runs/exp1` with out_dir pointing at a third run must not overwrite that run's log
    and checkpoints: the fork is refused unless out_dir is free (or --overwrite)."""
    from lrpo.runs import RunFolderError

    faces, base = setup_dirs
    LRPOTrainer(make_cfg(faces, base, tmp_path / "exp1", epochs=1), progress=False).run()
    LRPOTrainer(make_cfg(faces, base, tmp_path / "other", epochs=1), progress=False).run()
    before = (tmp_path / "other" / "log.jsonl").read_text()
    with pytest.raises(RunFolderError, match="other already holds a run"):
        LRPOTrainer(make_cfg(faces, base, tmp_path / "other", epochs=2), resume=tmp_path / "exp1", progress=False)
    assert (tmp_path / "other" / "log.jsonl").read_text() == before
    fork = LRPOTrainer(make_cfg(faces, base, tmp_path / "fork", epochs=2), resume=tmp_path / "exp1", progress=False)
    assert fork.epoch == 1  # a free folder takes the fork


def test_cpu_clock_budget_stops_on_this_process_cpu_time_and_epochs_log_it(setup_dirs, tmp_path, monkeypatch):
    """time_budget_clock=cpu reads time.process_time, not the wall clock. A fake CPU clock that
    advances 40 s per reading, with a 1-minute budget: start 0; check 40 (< 60 s: train); the epoch
    reads 80 before and 120 after (its time_cpu_s = 40); check 160 (> 60 s): stop after one epoch
    with a checkpoint, where the wall clock (the real one, well under a minute) allowed all 10."""
    import json

    faces, base = setup_dirs
    ticks = iter(range(0, 10_000, 40))
    monkeypatch.setattr(trainer_mod.time, "process_time", lambda: float(next(ticks)))
    cfg = make_cfg(faces, base, tmp_path / "run", epochs=10, time_budget_min=1.0, time_budget_clock="cpu")
    out = LRPOTrainer(cfg, progress=False).run()
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if "time_cpu_s" in r]
    assert out["epoch"] == len(epochs) == 1 and not out["complete"]
    assert epochs[0]["time_cpu_s"] == 40.0
    assert (tmp_path / "run" / "step_000001").is_dir()
