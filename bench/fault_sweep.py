"""Issue-10 benchmark: SIGKILL `lrpo train` and `lrpo pretrain` at random moments, resume, compare.

    OMP_NUM_THREADS=1 python bench/fault_sweep.py                      # 20 faults per command, ~12 min
    OMP_NUM_THREADS=1 python bench/fault_sweep.py --faults 4 --commands train   # a quick look

Where the kills land: the package's fault hook (``lrpo/faults.py``): ``LRPO_FAULT_AT=PHASE:N`` makes
the process SIGKILL itself the N-th time it reaches a fault point of PHASE (train: rollout, score,
update, checkpoint; pretrain: data, update, validate, checkpoint; checkpoint points lie halfway
through each file written, after the rename into place and after ``latest``). A calibration run,
uninterrupted, lists every fault point it passes (``LRPO_FAULT_LOG``); it is also the reference the
faulted runs are compared with. Each trial starts the run afresh and kills it ``--per-run`` times
in a row; the phases come from a fixed-seed shuffle that spreads the faults evenly, and each moment
is drawn uniformly from the fault points of that phase the process still has ahead of it (the
calibration list after the checkpoint it resumed from). After each kill the same command runs again
with ``--resume``; after the trial's last kill it runs until it completes. The runs are
deterministic, so one ``--seed`` gives the same kills every time.

Measured per fault: did it fire (death by SIGKILL), is every checkpoint on disk still complete, and
the work lost: units (epochs or steps) completed before the kill, from log.jsonl, minus the unit the
resume starts from, which must be at most one checkpoint interval. Per trial: the final weights (and
EMA) and optimiser state, bit for bit against the reference. In this process, too: a full disk
during a checkpoint write (ENOSPC from a patched ``open`` of lrpo.checkpoint) and a damaged latest
checkpoint (truncated weights, wrong tensor shapes, garbage state) met by ``--resume``.
Writes bench/results/fault_sweep.json.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import errno
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from safetensors.torch import load_file, save_file

import lrpo.checkpoint as ckpt_io
from lrpo.faults import PHASES
from lrpo.manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fault_sweep.json"
LAUNCH_TIMEOUT_S = 600
# log fields that measure time, not state (they differ between any two runs)
TIMING_KEYS = ("time_", "elapsed")
TIMING_SUFFIXES = ("_per_s",)

Hit = tuple[str, str]  # (phase, where) of one fault point the calibration run passed


# ---------------------------------------------------------------------------------------------
# the two commands, on tiny configs
# ---------------------------------------------------------------------------------------------
@dataclass
class Command:
    name: str  # "train" | "pretrain"
    unit: str  # what the checkpoint interval counts: "epoch" | "step"
    interval: int  # ckpt_every
    total: int  # epochs / steps of the whole run
    config: Path
    extra: tuple[str, ...] = ()
    startup_hits: int = 0  # fault points every process passes before its training loop, fresh or resumed

    def argv(self, out_dir: Path, resume: str | None = None) -> list[str]:
        """``resume``: None (a fresh run), "auto" (bare --resume) or a checkpoint path."""
        args = [self.name, "--config", str(self.config), f"out_dir={out_dir}", "--no-progress", *self.extra]
        if resume is not None:
            args += ["--resume"] + ([] if resume == "auto" else [str(resume)])
        return args

    def completed(self, out_dir: Path) -> int:
        """Units completed so far, as log.jsonl records them (one record per epoch / step)."""
        key, marker = ("epoch", "reward_mean") if self.name == "train" else ("step", "loss")
        done = 0
        log = out_dir / "log.jsonl"
        for line in log.read_text().splitlines() if log.is_file() else []:
            try:
                rec = json.loads(line)
            except ValueError:  # a line torn by the kill
                continue
            if marker in rec and isinstance(rec.get(key), int):
                done = max(done, rec[key])
        return done


def prepare(work: Path, epochs: int = 6, train_ckpt_every: int = 2, steps: int = 9, pretrain_ckpt_every: int = 3) -> dict[str, Command]:
    """Faces, a base policy and the two tiny configs (16 px pixel policy, 4 DDIM steps) under ``work``."""
    from lrpo.config import DiffusionConfig, PolicyConfig, to_dict
    from lrpo.policies.pixel_unet import PixelPolicy
    from lrpo.data.samples import embedded_faces

    work.mkdir(parents=True, exist_ok=True)
    faces = work / "faces"
    if not faces.is_dir():
        embedded_faces(faces, count=10, size=32, seed=0)
    base = work / "base"
    if not base.is_dir():  # an untrained but valid "pretrained" policy, as tests/rl/test_trainer.py builds
        pcfg = PolicyConfig(resolution=16, base_channels=8, channel_mults=(1, 2), stage1="none", prediction="v")
        torch.manual_seed(0)
        policy = PixelPolicy(pcfg)
        with torch.no_grad():  # make the zero-initialised output layer non-trivial
            policy.unet.out.weight.normal_(0, 0.02)
        ckpt_io.save_checkpoint(base, 0, policy, {"policy": to_dict(pcfg), "diffusion": to_dict(DiffusionConfig(sample_steps=4))}, {})
    train = dict(
        init_checkpoint=str(base), device="cpu", epochs=epochs, ckpt_every=train_ckpt_every, keep_last=2,
        group_size=4, groups_per_epoch=4, rollout_groups_per_batch=2,  # two rollout chunks per epoch
        sample_steps=4, eval_eta=0.0, train_fraction=1.0, update_mode="accumulate", minibatch_size=8,  # two optimiser steps
        timesteps_per_forward=4, lr=1e-3, clip_range=0.2, reg_weight=1e-2, reg_last_k=2, ema_decay=0.9,
        data=dict(hq=str(faces), resolution=16, val_count=2),
        degradation=dict(blur_sigma=[0.1, 1.0], downscale=[1.0, 2.0], noise_sigma=[0.0, 2.0], jpeg_quality=[80, 99]),
        reward=dict(preset="", terms={"brightness": {"weight": 1.0}}),
    )
    pretrain = dict(
        device="cpu", steps=steps, batch_size=4, log_every=1, val_every=pretrain_ckpt_every, val_steps=2,
        ckpt_every=pretrain_ckpt_every, keep_last=2,
        data=dict(hq=str(faces), resolution=16, val_count=2),
        policy=dict(resolution=16, base_channels=8, channel_mults=[1, 2], stage1_channels=8, stage1_blocks=1),
        degradation=dict(kernel_size=7), optim=dict(warmup_steps=2),
    )
    (work / "train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
    (work / "pretrain.yaml").write_text(yaml.safe_dump(pretrain, sort_keys=False))
    return {
        "train": Command("train", "epoch", train_ckpt_every, epochs, work / "train.yaml", ("--eval-every", "0")),
        # every pretrain process degrades its held-out faces once before training
        "pretrain": Command("pretrain", "step", pretrain_ckpt_every, steps, work / "pretrain.yaml", startup_hits=1),
    }


# ---------------------------------------------------------------------------------------------
# launching, calibration, where a process resumes
# ---------------------------------------------------------------------------------------------
def _lrpo() -> list[str]:
    script = Path(sys.executable).with_name("lrpo")  # the console script of this environment
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lrpo.cli"]


def launch(cmd: Command, out_dir: Path, resume: str | None = None, fault: str | None = None, log: Path | None = None) -> dict:
    """Run the command in a fresh process (one thread); returns rc, seconds and the last stderr line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPO_FAULT_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if fault:
        env["LRPO_FAULT_AT"] = fault
    if log:
        env["LRPO_FAULT_LOG"] = str(log)
    t0 = time.perf_counter()
    proc = subprocess.run(_lrpo() + cmd.argv(out_dir, resume), env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 2), "stderr": lines[-1] if lines else ""}


def read_hits(path: Path) -> list[Hit]:
    hits = []
    for line in path.read_text().splitlines():
        phase, _n, *where = line.split(" ", 2)
        hits.append((phase, where[0] if where else ""))
    return hits


def calibrate(cmd: Command, work: Path) -> tuple[Path, list[Hit], dict]:
    """The uninterrupted reference run, listing every fault point it passes."""
    ref, log = work / f"{cmd.name}-reference", work / f"{cmd.name}-hits.txt"
    shutil.rmtree(ref, ignore_errors=True)
    log.unlink(missing_ok=True)
    run = launch(cmd, ref, log=log)
    if run["rc"] != 0:
        raise RuntimeError(f"the reference `lrpo {cmd.name}` failed (rc {run['rc']}): {run['stderr']}")
    return ref, read_hits(log), run


def resume_point(run_dir: Path) -> tuple[str | None, int]:
    """(checkpoint folder name, unit) a bare --resume continues from; (None, 0) = from the start."""
    from lrpo.cli import _has_checkpoint

    if not _has_checkpoint(str(run_dir)):
        return None, 0
    ckpt = ckpt_io.find_checkpoint(run_dir)  # verified: a damaged one raises here
    return ckpt.name, int(ckpt_io.load_meta(ckpt)["step"])


def resumable(run_dir: Path) -> bool:
    """Did the killed process leave a run to --resume? (One killed before it wrote anything did not:
    the same command runs again without --resume, as a user would after the error saying so.)"""
    from lrpo.cli import _has_checkpoint

    return _has_checkpoint(str(run_dir)) or any((run_dir / n).is_file() for n in ("config.yaml", "log.jsonl"))


def remaining_hits(cmd: Command, timeline: list[Hit], resume_from: str | None) -> list[Hit]:
    """The fault points a process starting from checkpoint ``resume_from`` passes, in order."""
    if resume_from is None:
        return timeline
    ends = [i for i, (p, where) in enumerate(timeline) if p == "checkpoint" and where == f"{resume_from}: latest replaced"]
    if not ends:
        raise RuntimeError(f"the reference run never saved {resume_from}")
    return timeline[: cmd.startup_hits] + timeline[ends[-1] + 1 :]


def draw_moment(rng: random.Random, hits: list[Hit], phase: str) -> tuple[int, str] | None:
    """(N, where) of a fault point of ``phase`` drawn uniformly from ``hits``; None if it has none."""
    at = [i for i, (p, _) in enumerate(hits) if p == phase]
    if not at:
        return None
    i = rng.choice(at)
    return sum(1 for p, _ in hits[: i + 1] if p == phase), hits[i][1]


def on_disk(run_dir: Path) -> dict:
    """Every listed checkpoint complete? What did the killed writer leave behind?"""
    listed = ckpt_io.list_checkpoints(run_dir)
    damaged = [f"{p.name}: {why}" for p in listed if (why := ckpt_io.checkpoint_problem(p))]
    latest = run_dir / "latest"
    named = latest.read_text().strip() if latest.is_file() else None
    if named and not (run_dir / named / "model.safetensors").is_file():
        named += " (missing: resume falls back to the newest step)"
    # hidden names are a killed writer's leftovers, except the record of what lrpo wrote (lrpo.manifest)
    hidden = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != MANIFEST_NAME] if run_dir.is_dir() else []
    return {"checkpoints": [p.name for p in listed], "damaged": damaged, "latest": named, "leftovers": len(hidden)}


# ---------------------------------------------------------------------------------------------
# comparing final states
# ---------------------------------------------------------------------------------------------
def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS) and not k.endswith(TIMING_SUFFIXES)} for r in history]


def compare_runs(ref: Path, run: Path) -> dict:
    """Final checkpoint of ``run`` against ``ref``: weights (and EMA), optimiser, the rest of the state, the log."""
    a, b = ckpt_io.find_checkpoint(ref), ckpt_io.find_checkpoint(run)
    weights = all(
        (a / f).is_file() == (b / f).is_file() and (not (a / f).is_file() or _equal(load_file(str(a / f)), load_file(str(b / f))))
        for f in ("model.safetensors", "ema.safetensors")
    )
    sa, sb = ckpt_io.load_state(a), ckpt_io.load_state(b)
    # the clocks (elapsed, elapsed_cpu) measure time, not state
    rest = lambda s: {k: v for k, v in s.items() if k not in ("optimizer", "history") and not k.startswith(TIMING_KEYS)}  # noqa: E731
    return {
        "checkpoint": b.name,
        "weights_equal": a.name == b.name and weights,
        "optimizer_equal": _equal(sa["optimizer"], sb["optimizer"]),
        "state_equal": _equal(rest(sa), rest(sb)),  # step/epoch, data order, generator and RNG states
        "log_equal": _timeless(sa.get("history", [])) == _timeless(sb.get("history", [])),
    }


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
def plan_phases(cmd: Command, faults: int, rng: random.Random) -> list[str]:
    """``faults`` phases, as evenly spread over the command's phases as the count allows, shuffled."""
    phases = [PHASES[cmd.name][i % len(PHASES[cmd.name])] for i in range(faults)]
    rng.shuffle(phases)
    return phases


def run_trial(cmd: Command, timeline: list[Hit], ref: Path, phases: list[str], out_dir: Path, rng: random.Random) -> tuple[list[dict], dict]:
    """Kill a fresh run once per phase in ``phases`` (resuming in between), then resume it to the end."""
    shutil.rmtree(out_dir, ignore_errors=True)
    faults: list[dict] = []
    launches: list[dict] = []
    for phase in phases:
        resume = "auto" if resumable(out_dir) else None  # the first process is a fresh run
        start, start_unit = resume_point(out_dir) if resume else (None, 0)
        moment = draw_moment(rng, remaining_hits(cmd, timeline, start), phase)
        if moment is None:  # nothing of this phase is left in this run: the caller starts another
            break
        n, where = moment
        run = launch(cmd, out_dir, resume, fault=f"{phase}:{n}")
        launches.append(run)
        done = cmd.completed(out_dir)
        restart, restart_unit = resume_point(out_dir)
        lost = done - restart_unit
        faults.append({
            "command": cmd.name, "phase": phase, "n": n, "where": where, "resumed_from": start, "from_unit": start_unit,
            "fired": run["rc"] == -9, "rc": run["rc"], "stderr": run["stderr"] if run["rc"] != -9 else "",
            "completed": done, "restart_from": restart, "restart_unit": restart_unit,
            "lost": lost, "lost_intervals": round(lost / cmd.interval, 3), "next": "--resume" if resumable(out_dir) else "fresh",
            **on_disk(out_dir),
        })
    for _ in range(3):  # "the same command again, until the run completes"
        run = launch(cmd, out_dir, "auto" if resumable(out_dir) else None)
        launches.append(run)
        if run["rc"] == 0:
            break
    trial = {"command": cmd.name, "out_dir": str(out_dir), "faults": len(faults), "launches": len(launches),
             "resumes": sum(f["next"] == "--resume" for f in faults),
             "completed": launches[-1]["rc"] == 0, "last_stderr": launches[-1]["stderr"] if launches[-1]["rc"] else "",
             "seconds": round(sum(r["seconds"] for r in launches), 1)}
    trial.update(compare_runs(ref, out_dir) if trial["completed"] else {"weights_equal": False, "optimizer_equal": False})
    for f in faults:
        f["final_equal"] = bool(trial["weights_equal"] and trial["optimizer_equal"])
    return faults, trial


def sweep_command(cmd: Command, work: Path, faults: int, per_run: int, seed: int) -> dict:
    rng = random.Random(f"{seed}:{cmd.name}")
    ref, timeline, ref_run = calibrate(cmd, work)
    queue = plan_phases(cmd, faults, rng)
    done_faults: list[dict] = []
    trials: list[dict] = []
    while queue:
        phases, queue = queue[:per_run], queue[per_run:]
        got, trial = run_trial(cmd, timeline, ref, phases, work / f"{cmd.name}-trial{len(trials):02d}", rng)
        if not got:
            raise RuntimeError(f"the reference `lrpo {cmd.name}` passed no fault point of phase {phases[0]!r}")
        queue = phases[len(got):] + queue  # phases a trial had no room for go to the next one
        done_faults += got
        trials.append(trial)
        print(f"  {cmd.name} trial {len(trials)}: {len(got)} kill(s) {[f['phase'] + ':' + str(f['n']) for f in got]}, "
              f"final state {'equal' if trial['weights_equal'] and trial['optimizer_equal'] else 'DIFFERENT'} "
              f"({trial['seconds']:.0f} s)", flush=True)
    hits = {p: sum(1 for q, _ in timeline if q == p) for p in PHASES[cmd.name]}
    return {"unit": cmd.unit, "interval": cmd.interval, "total": cmd.total, "config": yaml.safe_load(cmd.config.read_text()),
            "reference_seconds": ref_run["seconds"], "fault_points": hits, "faults": done_faults, "trials": trials,
            "reference": str(ref)}


# ---------------------------------------------------------------------------------------------
# a full disk, a damaged checkpoint (in this process)
# ---------------------------------------------------------------------------------------------
class _FullFile:
    """A file being written on a disk with ``left[0]`` bytes free: writes what fits, then ENOSPC."""

    def __init__(self, f, left: list[int], name: str):
        self._f, self._left, self._name = f, left, name

    def write(self, data) -> int:
        room = min(len(data), self._left[0])
        if room:
            self._f.write(data[:room])
            self._left[0] -= room
        if room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
        return room

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextlib.contextmanager
def full_disk(free_bytes: int, from_checkpoint: int = 1) -> Iterator[None]:
    """lrpo.checkpoint writes onto a disk that has ``free_bytes`` left once its ``from_checkpoint``-th
    checkpoint write begins (counted by the temporary folders it writes into)."""
    real_open = builtins.open
    folders: set[str] = set()
    left = [free_bytes]

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        folder = Path(file).parent.name
        if ".tmp-" in folder:
            folders.add(folder)
        return _FullFile(f, left, str(file)) if len(folders) >= from_checkpoint else f

    ckpt_io.open = open_on_full_disk  # shadows the builtin for that module only
    try:
        yield
    finally:
        del ckpt_io.open


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """``lrpo ARGV`` in this process: (exit code, stderr)."""
    from lrpo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def disk_full_check(cmd: Command, ref: Path, work: Path) -> dict:
    """The disk fills up halfway through the second checkpoint's weights; then space is freed and the run resumed."""
    out = work / f"{cmd.name}-disk-full"
    shutil.rmtree(out, ignore_errors=True)
    half_model = (ckpt_io.find_checkpoint(ref) / "model.safetensors").stat().st_size // 2
    with full_disk(half_model, from_checkpoint=2):
        rc, err = run_in_process(cmd.argv(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    prev = out / f"step_{cmd.interval:06d}"
    failed = out / f"step_{2 * cmd.interval:06d}"
    message = lines[-1] if lines else ""
    state = on_disk(out)
    rc2, err2 = run_in_process(cmd.argv(out, resume="auto"))
    res = {
        "command": cmd.name, "rc": rc, "message": message, "stderr_lines": len(lines),
        "names_checkpoint": str(failed) in message, "says_disk_full": "disk is full" in message,
        "says_previous_kept": f"nothing of the previous checkpoint {prev} was lost" in message,
        "previous_intact": state["checkpoints"] == [prev.name] and not state["damaged"] and state["latest"] == prev.name,
        "leftovers": state["leftovers"], "resume_rc": rc2, "resume_stderr": err2.strip()[-300:] if rc2 else "",
    }
    if rc2 == 0:
        res.update(compare_runs(ref, out))
    res["ok"] = bool(rc == 2 and len(lines) == 1 and res["names_checkpoint"] and res["says_disk_full"] and res["says_previous_kept"]
                     and res["previous_intact"] and not res["leftovers"] and rc2 == 0 and res.get("weights_equal")
                     and res.get("optimizer_equal"))
    return res


def damage(ckpt: Path, kind: str, seed: int = 0) -> None:
    """Damage checkpoint folder ``ckpt``: "truncated" weights, "shapes" (a valid file, one tensor
    reshaped), or "garbage" state."""
    if kind == "truncated":
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "shapes":
        sd = load_file(str(ckpt / "model.safetensors"))
        key = next(k for k, v in sd.items() if v.ndim >= 2 and tuple(v.shape) != tuple(reversed(v.shape)))
        sd[key] = sd[key].reshape(tuple(reversed(sd[key].shape))).contiguous()  # same size, wrong shape
        save_file(sd, str(ckpt / "model.safetensors"))
    elif kind == "garbage":
        f = ckpt / "state.pt"
        f.write_bytes(random.Random(seed).randbytes(f.stat().st_size))
    else:
        raise ValueError(kind)


DAMAGES = ("truncated", "shapes", "garbage")


def corruption_check(cmd: Command, ref: Path, work: Path) -> list[dict]:
    """Each damage on a copy of the finished reference: --resume must refuse the latest checkpoint by name
    and offer the one before; for the last damage, resuming from the offered one must reach the reference."""
    results = []
    for kind in DAMAGES:
        copy = work / f"{cmd.name}-damaged-{kind}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ref, copy)
        *_, before, latest = ckpt_io.list_checkpoints(copy)
        damage(latest, kind)
        rc, err = run_in_process(cmd.argv(copy, resume="auto"))
        lines = [ln for ln in err.splitlines() if ln.strip()]
        message = lines[-1] if lines else ""
        res = {"command": cmd.name, "damage": kind, "rc": rc, "message": message,
               "names_damaged": f"{latest} is damaged" in message, "offers_previous": f"--resume {before}" in message}
        if kind == DAMAGES[-1]:
            rc2, err2 = run_in_process(cmd.argv(copy, resume=str(before)))
            res.update(resumed_from_offer_rc=rc2, **(compare_runs(ref, copy) if rc2 == 0 else {"stderr": err2[-300:]}))
        res["ok"] = bool(rc == 2 and len(lines) == 1 and res["names_damaged"] and res["offers_previous"]
                         and (kind != DAMAGES[-1] or (res.get("weights_equal") and res.get("optimizer_equal"))))
        results.append(res)
    return results


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def summarise(per_command: dict[str, dict]) -> dict:
    rows, totals = [], {"faults": 0, "fired": 0, "trials": 0, "resumes": 0, "fresh_restarts": 0, "weights_equal": 0,
                        "optimizer_equal": 0, "checkpoints_intact": 0}
    worst = []
    for name, res in per_command.items():
        faults, trials = res["faults"], res["trials"]
        for phase in PHASES[name]:
            fs = [f for f in faults if f["phase"] == phase]
            lost = [f["lost"] for f in fs]
            rows.append({
                "command": name, "phase": phase, "faults": len(fs), "fired": sum(f["fired"] for f in fs),
                "intact": sum(not f["damaged"] for f in fs), "final_equal": sum(f["final_equal"] for f in fs),
                "lost_max": max(lost, default=0), "lost_mean": round(sum(lost) / len(lost), 2) if lost else 0.0,
                "lost_max_intervals": round(max(lost, default=0) / res["interval"], 3), "unit": res["unit"],
            })
        totals["faults"] += len(faults)
        totals["fired"] += sum(f["fired"] for f in faults)
        totals["checkpoints_intact"] += sum(not f["damaged"] for f in faults)
        totals["trials"] += len(trials)
        totals["resumes"] += sum(t["resumes"] for t in trials)
        totals["fresh_restarts"] += sum(f["next"] == "fresh" for f in faults)
        totals["weights_equal"] += sum(bool(t["weights_equal"]) for t in trials)
        totals["optimizer_equal"] += sum(bool(t["optimizer_equal"]) for t in trials)
        lost = [f["lost"] for f in faults]
        totals[f"{name}_lost_max_{res['unit']}s"] = max(lost, default=0)
        totals[f"{name}_lost_mean_{res['unit']}s"] = round(sum(lost) / len(lost), 3) if lost else 0.0
        worst.append(max(lost, default=0) / res["interval"])
    totals["lost_max_intervals"] = round(max(worst, default=0.0), 3)
    totals["within_one_interval"] = all(w <= 1.0 for w in worst)
    return {"rows": rows, "totals": totals}


def print_table(summary: dict, per_command: dict[str, dict], extra: dict) -> None:
    # fired: died by SIGKILL; intact: every checkpoint on disk complete after the kill; final=: its trial
    # ended bit-identical to the uninterrupted run; lost: units completed before the kill minus the resume's start
    print(f"\n{'command':9s} {'phase':10s} {'faults':>6s} {'fired':>6s} {'intact':>7s} {'final=':>7s} "
          f"{'lost max':>10s} {'lost mean':>10s} {'max/interval':>13s}")
    for r in summary["rows"]:
        lost = f"{r['lost_max']} {r['unit']}s"
        print(f"{r['command']:9s} {r['phase']:10s} {r['faults']:6d} {r['fired']:6d} {r['intact']:7d} {r['final_equal']:7d} "
              f"{lost:>10s} {r['lost_mean']:10.2f} {r['lost_max_intervals']:13.2f}")
    t = summary["totals"]
    per_cmd = "; ".join(
        f"{name} {len(res['faults'])} ("
        + ", ".join(f"{p} {sum(f['phase'] == p for f in res['faults'])}" for p in PHASES[name]) + ")"
        for name, res in per_command.items()
    )
    print(f"\nfaults injected: {t['faults']} [{per_cmd}], fired (died by SIGKILL): {t['fired']}")
    print(f"runs resumed: {t['resumes']} with --resume, {t['fresh_restarts']} started afresh (killed before writing anything), "
          f"over {t['trials']} trials; every checkpoint on disk complete after {t['checkpoints_intact']}/{t['faults']} kills")
    print(f"final states equal to the uninterrupted run: weights {t['weights_equal']}/{t['trials']}, "
          f"optimizer {t['optimizer_equal']}/{t['trials']} trials")
    lost = "; ".join(
        f"{name}: max {t[name + '_lost_max_' + res['unit'] + 's']} {res['unit']}s, mean "
        f"{t[name + '_lost_mean_' + res['unit'] + 's']:.2f} (interval {res['interval']})" for name, res in per_command.items()
    )
    print(f"progress lost per fault: {lost}; worst {t['lost_max_intervals']:.2f} checkpoint interval(s) "
          f"({'within' if t['within_one_interval'] else 'MORE THAN'} one interval)")
    if extra.get("disk_full"):
        print("full disk during a checkpoint write: " + "; ".join(
            f"{d['command']} {'ok' if d['ok'] else 'FAILED'}" for d in extra["disk_full"]) + f"\n  e.g. {extra['disk_full'][0]['message']}")
    if extra.get("corruption"):
        print("damaged latest checkpoint on --resume: " + "; ".join(
            f"{c['command']}/{c['damage']} {'ok' if c['ok'] else 'FAILED'}" for c in extra["corruption"])
              + f"\n  e.g. {extra['corruption'][0]['message']}")


def sweep(work: Path, commands: list[str], faults: int = 20, per_run: int = 4, seed: int = 0, checks: bool = True,
          sizes: dict | None = None) -> dict:
    """Everything the script measures; ``sizes`` passes run lengths to :func:`prepare` (the tests shorten them)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cmds = prepare(work, **(sizes or {}))
    per_command = {}
    extra: dict[str, list] = {"disk_full": [], "corruption": []}
    for name in commands:
        print(f"{name}: calibration run, then {faults} faults, {per_run} per run", flush=True)
        per_command[name] = sweep_command(cmds[name], work, faults, per_run, seed)
        if checks:
            ref = Path(per_command[name]["reference"])
            extra["disk_full"].append(disk_full_check(cmds[name], ref, work))
            extra["corruption"] += corruption_check(cmds[name], ref, work)
    summary = summarise(per_command)
    return {"summary": summary, "commands": per_command, **extra, "seed": seed, "faults_per_command": faults,
            "faults_per_run": per_run, "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=20, help="faults per command (default 20)")
    ap.add_argument("--per-run", type=int, default=4, help="kills per trial before it may finish (default 4)")
    ap.add_argument("--commands", default="train,pretrain", help="comma-separated: train, pretrain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (default: a fresh temporary one, removed after)")
    ap.add_argument("--no-checks", action="store_true", help="skip the full-disk and damaged-checkpoint checks")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    if args.faults < 1 or args.per_run < 1 or not set(commands) <= set(PHASES):
        ap.error(f"--faults and --per-run must be >= 1 and --commands a subset of {','.join(PHASES)}")
    with contextlib.ExitStack() as stack:
        import tempfile

        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fault_sweep-")))
        result = sweep(work, commands, args.faults, args.per_run, args.seed, checks=not args.no_checks)
    extra = {k: result[k] for k in ("disk_full", "corruption")}
    print_table(result["summary"], result["commands"], extra)
    result.update(machine=" ".join(x for x in (platform.machine(), platform.processor(), f"{os.cpu_count()} CPUs") if x),
                  python=platform.python_version(), torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"),
                  command=" ".join(sys.argv))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwall time {result['wall_s']:.0f} s; wrote {args.out}")
    t = result["summary"]["totals"]
    ok = (t["fired"] == t["faults"] and t["weights_equal"] == t["optimizer_equal"] == t["trials"] and t["within_one_interval"]
          and t["checkpoints_intact"] == t["faults"] and all(x["ok"] for x in extra["disk_full"] + extra["corruption"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
