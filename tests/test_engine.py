"""The multi-process engines (lrpo.engine): DDP and FSDP2 on 2 gloo processes.

What must hold:
  * optimiser state keyed by name loads into an optimiser that lists its parameters in another
    order (the positions differ, the state per parameter may not);
  * with the shipped update mode (per_timestep), 2 processes under DDP or FSDP end with the
    weights one process reaches on the same data (up to float summation order);
  * a checkpoint written by 2 FSDP processes holds whole tensors: it resumes on 1 process, and
    1 + 1 epochs across that change equal 2 epochs straight on 1 process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from lrpo.checkpoint import find_checkpoint
from lrpo.config import from_dict, to_dict
from lrpo.rl.config import LRPOConfig
from lrpo.engine import full_state_dict, load_optimizer_state_by_name, optimizer_state_by_name
from lrpo.rl.trainer import LRPOTrainer

from tests.rl.test_trainer import _free_port, make_cfg, setup_dirs  # noqa: F401  (setup_dirs is a fixture)


def _adam_after_one_step(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(params, lr=1e-2)
    sum((p * (i + 1)).sum() for i, p in enumerate(params)).backward()
    opt.step()
    return opt


def test_optimizer_state_by_name_survives_another_parameter_order():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    names = {id(p): n for n, p in net.named_parameters()}
    opt = _adam_after_one_step(list(net.parameters()))
    saved = optimizer_state_by_name(opt, names)
    assert saved["format"] == "by_name" and set(saved["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}

    reordered = torch.optim.AdamW(list(reversed(list(net.parameters()))), lr=1e-2)
    load_optimizer_state_by_name(reordered, saved, names)
    for p in net.parameters():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(reordered.state[p][k], opt.state[p][k]), (names[id(p)], k)

    # a positional state (older checkpoints) still loads as it is
    positional = torch.optim.AdamW(list(net.parameters()), lr=1e-2)
    load_optimizer_state_by_name(positional, opt.state_dict(), names)
    assert torch.equal(positional.state[net[0].weight]["exp_avg"], opt.state[net[0].weight]["exp_avg"])

    other = torch.optim.AdamW(list(net[0].parameters()), lr=1e-2)
    with pytest.raises(ValueError, match=r"unexpected \['1.bias', '1.weight'\]"):
        load_optimizer_state_by_name(other, saved, names, source="ckpt")


def _engine_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tr = LRPOTrainer(from_dict(LRPOConfig, cfg_dict), progress=False)
    tr.run()
    state = full_state_dict(tr.policy.state_dict())  # (collective under FSDP)
    torch.save({"state": state, "history": tr.history, "engine": tr.engine.kind}, Path(out) / f"engine_rank{rank}.pt")
    torch.distributed.destroy_process_group()


# per_timestep and train_fraction 0.99-like truncation (3 of 4 steps) are the shipped path
COMMON = dict(epochs=1, groups_per_epoch=4, group_size=4, rollout_groups_per_batch=2, reg_weight=1e-2, reg_last_k=2,
              update_mode="per_timestep", train_fraction=0.75, ema_decay=0.5,
              reward=dict(preset="", terms={"ssim": {"weight": 0.5}, "brightness": {"weight": 0.5}}))


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_under_each_engine_match_one_and_resume_on_one(setup_dirs, tmp_path, engine):
    faces, base = setup_dirs
    single = LRPOTrainer(make_cfg(faces, base, tmp_path / "single", minibatch_size=16, **{**COMMON, "epochs": 2}), progress=False)
    single.run()

    multi_cfg = make_cfg(faces, base, tmp_path / "multi", minibatch_size=8, engine=engine, **COMMON)
    mp.start_processes(_engine_worker, args=(2, _free_port(), to_dict(multi_cfg), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"engine_rank{r}.pt") for r in range(2))
    assert r0["engine"] == engine
    saved = load_file(str(tmp_path / "multi" / "step_000001" / "model.safetensors"))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks diverged at {k}"
        assert torch.equal(saved[k], v), f"the checkpoint is not the whole tensor {k}"
    assert r0["history"][-1]["reward_mean"] == pytest.approx(single.history[0]["reward_mean"], rel=1e-6)

    # 1 process with the per-process minibatch of 2 would halve the global minibatch: refused
    from lrpo.runs import RunFolderError

    with pytest.raises(RunFolderError, match=r"global minibatch \(minibatch_size x 1 processes\): checkpoint '8 x 2 = 16', now 8"):
        LRPOTrainer(make_cfg(faces, base, tmp_path / "multi", minibatch_size=8, **{**COMMON, "epochs": 2}), resume=tmp_path / "multi", progress=False)
    # epoch 2 on one process from the 2-process checkpoint == epoch 2 of the straight run
    resumed = LRPOTrainer(make_cfg(faces, base, tmp_path / "multi", minibatch_size=16, **{**COMMON, "epochs": 2}),
                          resume=tmp_path / "multi", progress=False)
    assert resumed.epoch == 1
    resumed.run()
    final = resumed.policy.state_dict()
    initial = load_file(str(find_checkpoint(base) / "model.safetensors"))
    for k, v in single.policy.state_dict().items():
        # float summation order differs between 2 processes and 1; a wrong weighting, a lost
        # optimiser state or a shard saved in place of the whole tensor would not be this close
        assert torch.allclose(final[k], v, atol=2e-5), k
    moved = max(float((single.policy.state_dict()[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-4  # the runs changed the weights, so closeness above is not trivial
    for k in ("exp_avg", "exp_avg_sq"):
        for p_single, p_resumed in zip(single.params, resumed.params):
            assert torch.allclose(single.optimizer.state[p_single][k], resumed.optimizer.state[p_resumed][k], atol=1e-6, rtol=1e-3)


def test_fsdp_shards_the_latent_policys_controlnet_and_matches_one_process(setup_dirs, tmp_path):
    """The SD 2.1 + ControlNet policy (tiny random networks): FSDP shards each ControlNet block and
    the ControlNet; 2 processes end where 1 ends, and the checkpoint holds the whole ControlNet."""
    import yaml

    from lrpo.config import DiffusionConfig
    from lrpo.policies.latent_config import LatentPolicyConfig

    faces, _ = setup_dirs
    arch = LatentPolicyConfig.preset("tiny")
    section = {**to_dict(arch), "random_init": True}
    policy_file = tmp_path / "policy-tiny.yaml"
    policy_file.write_text(yaml.safe_dump({"policy": section, "diffusion": to_dict(DiffusionConfig(sample_steps=4))}))
    over = dict(epochs=1, group_size=2, groups_per_epoch=4, rollout_groups_per_batch=2, lr=1e-4, reg_weight=1e-2, reg_last_k=2,
                update_mode="per_timestep", train_fraction=0.75, data=dict(hq=str(faces), resolution=arch.resolution, val_count=2))
    single = LRPOTrainer(make_cfg(faces, policy_file, tmp_path / "single", minibatch_size=8, **over), progress=False)
    start = {k: v.clone() for k, v in single.policy.trainable_state_dict().items()}
    single.run()
    cfg = make_cfg(faces, policy_file, tmp_path / "multi", minibatch_size=4, engine="fsdp", **over)
    mp.start_processes(_engine_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    saved = load_file(str(find_checkpoint(tmp_path / "multi") / "model.safetensors"))
    want = single.policy.trainable_state_dict()
    assert saved.keys() == want.keys() and all(k.startswith("controlnet.") for k in saved)
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-5  # the ControlNet moved
    for k, v in want.items():
        assert torch.allclose(saved[k], v, atol=2e-5), k


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_a_process_whose_groups_are_all_dropped_keeps_step_with_the_others(setup_dirs, tmp_path, engine):
    """Rank 1's groups all score the same (dropped): it has no sample in any minibatch but must
    still make every collective of DDP / FSDP, in the same order (forward, agreement, backward), and
    the weights must equal one process holding everything (per_timestep, the shipped mode)."""
    from lrpo.data.datasets import FaceImageSet
    from lrpo.data.groups import GroupSampler

    faces, base = setup_dirs
    names = FaceImageSet(faces, resolution=16).split(2)[0].names
    rank1 = {names[g.index] for g in GroupSampler(len(names), 4, 4, 0, rank=1, world_size=2).groups(0)}
    over = {**COMMON, "ema_decay": 0.0,
            "reward": dict(preset="", terms={"test_gated_brightness": {"weight": 1.0, "constant_for": sorted(rank1)}})}
    single = LRPOTrainer(make_cfg(faces, base, tmp_path / "single", minibatch_size=8, **over), progress=False)
    single.run()
    assert 1 <= single.history[-1]["dropped_groups"] < 4
    # rank 0 holds every kept sample (at most its 8): one minibatch of them in both runs, so each
    # optimiser step sees the same samples (minibatch_size is per process)
    cfg = make_cfg(faces, base, tmp_path / "multi", minibatch_size=8, engine=engine, **over)
    ctx = mp.start_processes(_engine_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = 180
    while not ctx.join(timeout=5):
        deadline -= 5
        assert deadline > 0, "the processes hung: their collectives did not match"
    r0, r1 = (torch.load(tmp_path / f"engine_rank{r}.pt") for r in range(2))
    assert r0["history"][-1]["dropped_groups"] == single.history[-1]["dropped_groups"]
    for k, v in single.policy.state_dict().items():
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks diverged at {k}"
        assert torch.allclose(r0["state"][k], v, atol=2e-6), k


def _refusal_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        LRPOTrainer(from_dict(LRPOConfig, cfg_dict), progress=False)
        message = "built"
    except ValueError as e:
        message = str(e)
    (Path(out) / f"refusal_rank{rank}.txt").write_text(message)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_fsdp_refuses_trainable_parameters_outside_its_units(setup_dirs, tmp_path):
    """LoRA adapters in the UNet (lora_unet) lie outside the ControlNet's shard units: their
    gradients would never be summed over processes, so engine=fsdp refuses the policy by name."""
    import yaml

    from lrpo.config import DiffusionConfig
    from lrpo.policies.latent_config import LatentPolicyConfig

    faces, _ = setup_dirs
    arch = LatentPolicyConfig.preset("tiny")
    section = {**to_dict(arch), "random_init": True, "lora_rank": 2, "lora_unet": True}
    policy_file = tmp_path / "policy-lora.yaml"
    policy_file.write_text(yaml.safe_dump({"policy": section, "diffusion": to_dict(DiffusionConfig(sample_steps=4))}))
    cfg = make_cfg(faces, policy_file, tmp_path / "lora", epochs=1, group_size=2, groups_per_epoch=2, engine="fsdp",
                   data=dict(hq=str(faces), resolution=arch.resolution, val_count=2))
    mp.start_processes(_refusal_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for r in range(2):
        message = (tmp_path / f"refusal_rank{r}.txt").read_text()
        assert "trainable parameters lie outside them (unet." in message and "use engine=ddp" in message, message


def _resume_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str, resume: str, tag: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tr = LRPOTrainer(from_dict(LRPOConfig, cfg_dict), resume=resume or None, progress=False)
    tr.run()
    state = full_state_dict(tr.policy.state_dict())
    optim = optimizer_state_by_name(tr.optimizer, tr.engine.names())["state"]
    torch.save({"state": state, "optim": optim, "history": tr.history}, Path(out) / f"{tag}_rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_fsdp_resume_on_the_same_processes_is_exact(setup_dirs, tmp_path):
    """N + N epochs with a resume equal 2N straight under FSDP on 2 processes, bit for bit: the
    whole-tensor checkpoint is cut back into the same shards, AdamW's state by name included."""
    faces, base = setup_dirs
    over = {**COMMON, "engine": "fsdp"}

    def job(out: str, epochs: int, resume: str, tag: str) -> dict:
        cfg = make_cfg(faces, base, tmp_path / out, minibatch_size=8, **{**over, "epochs": epochs})
        mp.start_processes(_resume_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path), resume, tag), nprocs=2,
                           join=True, start_method="spawn")
        return torch.load(tmp_path / f"{tag}_rank0.pt")

    straight = job("straight", 2, "", "straight")
    job("split", 1, "", "first")
    resumed = job("split", 2, str(tmp_path / "split"), "resumed")
    for k, v in straight["state"].items():
        assert torch.equal(resumed["state"][k], v), k
    assert straight["optim"].keys() == resumed["optim"].keys()
    for name, st in straight["optim"].items():
        for k, v in st.items():
            assert torch.equal(resumed["optim"][name][k], v), (name, k)
    assert [r.get("reward_mean") for r in straight["history"]] == [r.get("reward_mean") for r in resumed["history"]]
