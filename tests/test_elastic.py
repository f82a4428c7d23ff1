"""torchrun --max-restarts: a rank killed mid-run brings the job back from the last checkpoint.

Two `lrpo train` jobs of 2 gloo processes each on the same data: one uninterrupted, one whose rank 1
gets SIGKILL right after the first checkpoint appears (in epoch 2). torchrun restarts the worker
group; `lrpo train` sees TORCHELASTIC_RESTART_COUNT > 0 and resumes the folder's last checkpoint.
Same world size, same seeds: the final weights and optimiser state must equal bit for bit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lrpo.checkpoint import find_checkpoint
from lrpo.config import save_config

from tests.rl.test_trainer import _free_port, make_cfg, setup_dirs  # noqa: F401  (setup_dirs is a fixture)

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"torchrun not found beside {sys.executable}")


def _torchrun(cfg_path: Path, job: str, max_restarts: int) -> subprocess.Popen:
    lrpo = Path(sys.executable).with_name("lrpo")
    cmd = [str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", str(max_restarts),
           "--monitor-interval", "0.2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           str(lrpo), "train", "--config", str(cfg_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LRPO_TEST_JOB": job}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _worker_pid(job: str, rank: int, agent: int) -> int | None:
    """The pid of ``job``'s worker of ``rank``: a child of the torchrun ``agent`` with the environment
    torchrun gave it (its own short-lived children inherit that environment too)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if ppid != agent:
            continue
        if env.get("LRPO_TEST_JOB") == job and env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the worker to kill")
def test_a_killed_rank_restarts_and_ends_where_the_uninterrupted_job_ends(setup_dirs, tmp_path):
    faces, base = setup_dirs
    over = dict(epochs=3, groups_per_epoch=16, group_size=4, rollout_groups_per_batch=2, minibatch_size=8,
                update_mode="per_timestep", train_fraction=0.75, reg_weight=1e-2, reg_last_k=2, ckpt_every=1)
    results = {}
    for job, restarts in (("straight", 0), ("killed", 2)):
        cfg = make_cfg(faces, base, tmp_path / job, **over)
        save_config(cfg, tmp_path / f"{job}.yaml")
        proc = _torchrun(tmp_path / f"{job}.yaml", job, restarts)
        killed = False
        if job == "killed":
            deadline = time.monotonic() + 240
            pid = None
            while pid is None or not (tmp_path / job / "step_000001").is_dir():
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no first checkpoint in time"
                pid = pid or _worker_pid(job, 1, proc.pid)  # found before the epoch it is to die in
                time.sleep(0.01)
            if not (tmp_path / job / "step_000002").is_dir():
                os.kill(pid, signal.SIGKILL)
                killed = True
        try:
            out, err = proc.communicate(timeout=300)
            (tmp_path / f"{job}.stderr").write_text(err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"torchrun job {job!r} hung; its stderr ends:\n{err[-3000:]}")
        assert proc.returncode == 0, err[-3000:]
        results[job] = (find_checkpoint(tmp_path / job), err)
        if job == "killed":
            assert killed, "the job ended before the kill: make the epochs longer"
            assert "exitcode: -9" in err, err[-2000:]  # torchrun saw the kill (and restarted: returncode 0)

    (a, _), (b, _) = results["straight"], results["killed"]
    assert a.name == b.name == "step_000003"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = (torch.load(p / "state.pt", weights_only=False) for p in (a, b))
    for name, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["optimizer"]["state"][name][k]), (name, k)
    ra = [r["reward_mean"] for r in sa["history"] if "reward_mean" in r]
    rb = [r["reward_mean"] for r in sb["history"] if "reward_mean" in r]
    assert ra == rb and len(ra) == 3
    shutil.rmtree(tmp_path / "straight", ignore_errors=True)


ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate is not installed (pip install accelerate)")
def test_accelerate_launch_with_a_config_file_runs_one_job_of_two_processes(setup_dirs, tmp_path):
    """`accelerate launch --config_file F -m lrpo.cli train ...`: accelerate starts the processes with
    torch's launcher (distributed_type MULTI_GPU works on CPUs too; MULTI_CPU would need MPI), and
    they form one job: the checkpoint records world size 2 and rank 0 alone writes the log."""
    faces, base = setup_dirs
    cfg = make_cfg(faces, base, tmp_path / "acc", epochs=1, minibatch_size=8, update_mode="per_timestep", train_fraction=0.75)
    save_config(cfg, tmp_path / "acc.yaml")
    (tmp_path / "accelerate.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\nnum_processes: 2\n"
        f"machine_rank: 0\nmixed_precision: 'no'\nmain_process_ip: 127.0.0.1\nmain_process_port: {_free_port()}\n"
        "rdzv_backend: static\nsame_network: true\ndynamo_config: {}\n"
    )
    cmd = [str(ACCELERATE), "launch", "--config_file", str(tmp_path / "accelerate.yaml"), "-m", "lrpo.cli", "train",
           "--config", str(tmp_path / "acc.yaml"), "--no-progress"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(find_checkpoint(tmp_path / "acc") / "state.pt", weights_only=False)
    assert state["world_size"] == 2
    records = [line for line in (tmp_path / "acc" / "log.jsonl").read_text().splitlines() if '"reward_mean"' in line]
    assert len(records) == 1
