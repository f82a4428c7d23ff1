"""CPU dress rehearsal of the paper's run: `lrpo train` with the reference setting, counts shrunk.

Runs, as a user would (each step is the `lrpo` command itself, in a child process):

  1. train     lrpo train --config configs/lrpo-reference.yaml init_checkpoint=configs/policy-sd21-diffbir.yaml
               with the `paper` reward (face reward, LPIPS-VGG, CLIP-IQA, DT-CWT), captions from a
               table, the guard on, and only the counts shrunk (2 groups of 2, 4 DDIM steps, 2 epochs);
  2. kill      a copy of the run's epoch-1 checkpoint is resumed and SIGKILLed during epoch 2's update;
  3. resume    --resume again finishes epoch 2; its weights must equal the uninterrupted run's bit for bit;
  4. evaluate  lrpo evaluate on a paired set (lrpo degrade), base policy vs the trained one, paper reward;
  5. restore   lrpo restore --aligned with --checkpoint RUN and with --policy sd21-diffbir;
  6. memory    (in this process) the memory account of the real setting: frozen weights at their
               precision, ControlNet weights + gradients + AdamW states, reward models, activations of
               the trainer's own loss per update sample at micro-batch 1 and 2, with and without
               gradient checkpointing, and the predicted accelerator memory at micro-batch 6 / 24 / 48
               beside SPEC section 9's measurements (8.7 GiB at 6 with checkpointing, 61 GiB at 48 without).

Model files come from --weights (LRPO_WEIGHTS): the published files, or random stand-ins written by
bench/make_standin_weights.py (real or tiny sizes; the loaders take their sizes from the files).
Prints one JSON document: wall time and peak RSS per phase, the exactness check, the memory account.

    python bench/make_standin_weights.py /tmp/standins/real --scale real
    python bench/paper_rehearsal.py --weights /tmp/standins/real --out /tmp/rehearsal        # 512 px
    python bench/make_standin_weights.py /tmp/standins/tiny --scale tiny
    python bench/paper_rehearsal.py --weights /tmp/standins/tiny --resolution 64 --out /tmp/rehearsal-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CONFIG = ROOT / "configs" / "lrpo-reference.yaml"
POLICY_CONFIG = ROOT / "configs" / "policy-sd21-diffbir.yaml"
DEFAULT_FACES = ROOT.parent / "shared" / "data" / "faces-hq"
SPEC_MEASURED_GIB = {"6_checkpointing": 8.7, "48_no_checkpointing": 61.0}  # SPEC section 9, one H100, bf16


def log(msg: str) -> None:
    print(f"[rehearsal] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# child processes: wall time, peak RSS, optional kill on a line of output
# ------------------------------------------------------------------------------------------------
def run_phase(name: str, cmd: list[str], env: dict, log_dir: Path, kill_on: str | None = None) -> dict:
    """Run ``cmd``; returns wall seconds, peak RSS (GiB, from wait4) and the exit code. With
    ``kill_on``, SIGKILL the child as soon as that text appears in its output (tqdm's bar titles)."""
    log(f"{name}: {' '.join(cmd)}")
    out_path = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        killed = False
        tail = b""
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            out.write(chunk)
            out.flush()  # the log can be followed while the phase runs
            tail = (tail + chunk)[-4096:]
            if kill_on and not killed and kill_on.encode() in tail:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    res = {"seconds": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "exit_code": code, "log": str(out_path)}
    if kill_on:
        res["killed_at"] = kill_on if killed else None
    if code != 0 and not killed:
        text = out_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"phase {name} failed with exit code {code}; the end of {out_path}:\n{text}")
    log(f"{name}: {res['seconds']} s, peak RSS {res['peak_rss_gib']} GiB")
    return res


def lrpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "lrpo.cli", *args]


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def prepare_inputs(args, out: Path) -> dict:
    """A list file of the faces used (read in place), a captions table, the policy YAML."""
    from lrpo.data.images import list_images

    need = args.val_count + args.groups
    faces = list_images(args.faces)[:need]
    if len(faces) < need:
        raise SystemExit(f"{args.faces}: need {need} faces (val {args.val_count} + {args.groups} training groups), found {len(faces)}")
    faces_list = out / "faces.txt"
    faces_list.write_text("".join(f"{p.resolve()}\n" for p in faces))
    captions = out / "captions.csv"
    # the rehearsal has no captioner: one plain caption per face, given through the table path
    captions.write_text("name,caption\n" + "".join(f"{p.name},a close-up photo of a person's face\n" for p in faces))
    policy = yaml.safe_load(POLICY_CONFIG.read_text())
    policy_file = POLICY_CONFIG
    if args.resolution != policy["policy"]["resolution"]:
        policy["policy"]["resolution"] = args.resolution
        policy_file = out / "policy-sd21-diffbir.yaml"
        policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
    return {"faces_list": faces_list, "captions": captions, "policy": policy_file, "faces": [str(p) for p in faces]}


def train_overrides(args, inputs: dict, out_dir: Path, epochs: int) -> list[str]:
    """The reference config with only the counts (and the device) changed."""
    return [
        f"init_checkpoint={inputs['policy']}",
        f"out_dir={out_dir}",
        f"data.hq={inputs['faces_list']}",
        f"data.captions={inputs['captions']}",
        f"data.resolution={args.resolution}",
        f"data.val_count={args.val_count}",
        f"epochs={epochs}",
        f"groups_per_epoch={args.groups}",
        f"group_size={args.group_size}",
        f"rollout_groups_per_batch={args.groups}",
        f"sample_steps={args.steps}",
        f"minibatch_size={args.groups * args.group_size}",
        "ckpt_every=1",
        "keep_last=0",
        "guard.every=1",
        "guard.metrics=[psnr,ssim]",
        "guard.action=warn",
        f"device={args.device}",
    ]


def checkpoint_copy(src_run: Path, step: str, dst_run: Path) -> None:
    """A run folder holding only ``step`` of ``src_run`` (what a run killed after that epoch leaves)."""
    if dst_run.exists():
        shutil.rmtree(dst_run)
    dst_run.mkdir(parents=True)
    shutil.copytree(src_run / step, dst_run / step)
    for name in ("config.yaml",):
        if (src_run / name).is_file():
            shutil.copy(src_run / name, dst_run / name)
    (dst_run / "latest").write_text(step + "\n")


def compare_weights(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    diffs = [float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if k in wb]
    return {"tensors": len(wa), "same_keys": wa.keys() == wb.keys(), "bitwise_equal": all(wa[k].equal(wb[k]) for k in wa if k in wb),
            "max_abs_diff": max(diffs) if diffs else None}


def registry_paths(*names: str) -> dict[str, str]:
    from lrpo import weights

    return {n: str(weights.resolve(n)) for n in names}


# ------------------------------------------------------------------------------------------------
# the memory account (in this process)
# ------------------------------------------------------------------------------------------------
def memory_account(args, inputs: dict, out: Path) -> dict:
    import torch

    from lrpo.config import load_config
    from lrpo.rl.config import LRPOConfig
    from lrpo.memory import GIB, fit_activation_bytes, module_bytes, predict_bytes, saved_activation_bytes, trainable_state_bytes
    from lrpo.rl.trainer import LRPOTrainer, RolloutBatch

    cfg = load_config(LRPOConfig, REFERENCE_CONFIG, train_overrides(args, inputs, out / "memory_run", 1) + ["guard.every=0"])
    trainer = LRPOTrainer(cfg, progress=False)
    policy = trainer.policy
    frozen = {name: module_bytes(getattr(policy, name)) for name in ("unet", "vae", "stage1") if getattr(policy, name, None) is not None}
    train_state = trainer_state = trainable_state_bytes(trainer.params)
    rewards = {}
    for key, (term, _) in trainer.reward.components.items():
        mods = [m for m in vars(term).values() if isinstance(m, torch.nn.Module)]
        rewards[key] = sum(module_bytes(m) for m in mods)
    static = sum(frozen.values()) + sum(trainer_state.values())

    latent = policy.cfg.latent_size
    c = policy.cfg.unet.latent_channels
    m_max = 2
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(m_max, args.steps + 1, c, latent, latent, generator=g)
    cond = torch.randn(m_max, c, latent, latent, generator=g)
    batch = RolloutBatch(
        group_ids=torch.zeros(m_max, dtype=torch.long), seeds=list(range(m_max)), names=["x"] * m_max, cond=cond,
        gt_x0=torch.randn(m_max, c, latent, latent, generator=g), hq=torch.zeros(m_max, 3, 8, 8), lq=torch.zeros(m_max, 3, 8, 8),
        latents=lat, log_probs=torch.zeros(m_max, args.steps), images=torch.zeros(m_max, 3, 8, 8),
    )
    adv = torch.ones(m_max, args.steps)
    gt = trainer.gt_targets(batch)
    step = trainer.reg_steps[0] if trainer.reg_steps else 0  # a regularised step: the costliest loss
    weights = [*policy.parameters(), *policy.buffers()]

    def measure(m: int, checkpointed: list) -> int:
        idx = torch.arange(m)
        steps = torch.full((m,), step, dtype=torch.long)
        return saved_activation_bytes(lambda: trainer.step_loss(batch, idx, steps, adv, gt)[0], exclude=weights, checkpointed=checkpointed)

    from lrpo.policies.latent import enable_gradient_checkpointing

    res: dict = {"frozen_weights_gib": {k: round(v / GIB, 3) for k, v in frozen.items()},
                 "frozen_dtype": str(next(policy.unet.parameters()).dtype),
                 "trainable": {"parameters_m": round(sum(p.numel() for p in trainer.params) / 1e6, 1),
                               **{f"{k}_gib": round(v / GIB, 3) for k, v in train_state.items()}},
                 "reward_models_gib": {k: round(v / GIB, 3) for k, v in rewards.items()},
                 "static_gib": round(static / GIB, 3), "activations": {}, "predicted_gib": {}}
    for ckpt in (False, True):
        if ckpt:
            enable_gradient_checkpointing(policy.unet)
            enable_gradient_checkpointing(policy.controlnet)
        t0 = time.perf_counter()
        blocks = [policy.unet, policy.controlnet] if ckpt else []
        b1, b2 = measure(1, blocks), measure(2, blocks)
        fit = fit_activation_bytes(1, b1, 2, b2)
        label = "checkpointing" if ckpt else "no_checkpointing"
        res["activations"][label] = {"micro_batch_1_gib": round(b1 / GIB, 3), "micro_batch_2_gib": round(b2 / GIB, 3),
                                     "per_sample_gib": round(fit.per_sample / GIB, 3), "seconds": round(time.perf_counter() - t0, 1)}
        res["predicted_gib"][label] = {str(m): round(predict_bytes(static, fit, m) / GIB, 2) for m in (6, 24, 48)}
        log(f"memory ({label}): {res['activations'][label]}")
    res["spec_measured_gib"] = SPEC_MEASURED_GIB
    res["note"] = ("a floor: weights, gradients, AdamW moments and the activations autograd keeps (with checkpointing: "
                   "the checkpointed blocks' inputs); reward models listed apart (they stay resident in the trainer); "
                   "not counted: the one-block recompute in backward, allocator caching and fragmentation, transient "
                   "buffers, the CUDA context")
    return res


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.environ.get("LRPO_WEIGHTS", ""), help="folder of model files (default $LRPO_WEIGHTS)")
    ap.add_argument("--faces", default=str(DEFAULT_FACES), help=f"HQ aligned faces, read in place (default {DEFAULT_FACES})")
    ap.add_argument("--out", default="/tmp/lrpo-paper-rehearsal", help="work folder (outside the repository)")
    ap.add_argument("--resolution", type=int, default=512, help="face size (512: the paper; 64 with --scale tiny stand-ins)")
    ap.add_argument("--groups", type=int, default=2, help="groups per epoch (reference: 24)")
    ap.add_argument("--group-size", type=int, default=2, help="candidates per group (reference: 9)")
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps (reference: 50)")
    ap.add_argument("--val-count", type=int, default=1, help="held-out faces for the guard")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every phase (0: torch's default)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["evaluate", "restore", "memory"], help="phases to leave out")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args(argv)
    if not args.weights:
        raise SystemExit("--weights (or LRPO_WEIGHTS) must name the folder of model files or stand-ins")

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    env = {**os.environ, "LRPO_WEIGHTS": str(Path(args.weights).resolve()), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    os.environ["LRPO_WEIGHTS"] = env["LRPO_WEIGHTS"]
    inputs = prepare_inputs(args, out)
    result: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "weights": env["LRPO_WEIGHTS"], "resolution": args.resolution,
        "counts": {"groups": args.groups, "group_size": args.group_size, "steps": args.steps, "epochs": 2, "val_count": args.val_count},
        "phases": {},
    }
    logs = out / "logs"
    base_cmd = ["train", "--config", str(REFERENCE_CONFIG)]
    straight, split = out / "run", out / "run_killed"
    result["command"] = "lrpo " + " ".join(base_cmd + train_overrides(args, inputs, straight, 2))
    ph = result["phases"]
    ph["train"] = run_phase("train", lrpo(*base_cmd, *train_overrides(args, inputs, straight, 2)), env, logs)

    checkpoint_copy(straight, "step_000001", split)
    resume_cmd = lrpo(*base_cmd, "--resume", *train_overrides(args, inputs, split, 2))
    ph["kill"] = run_phase("kill", resume_cmd, env, logs, kill_on="epoch 2/2 update")
    if ph["kill"]["killed_at"] is None:
        raise RuntimeError("the resumed run finished before it could be killed in epoch 2's update")
    ph["resume"] = run_phase("resume", resume_cmd, env, logs)
    result["resume_exact"] = compare_weights(straight / "step_000002", split / "step_000002")
    log_a = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (split / "log.jsonl").read_text().splitlines()]
    result["resume_exact"]["same_log"] = [r.get("reward_mean") for r in log_a] == [r.get("reward_mean") for r in log_b]
    result["training_log"] = [{k: r[k] for k in r if not k.startswith("guard_violations")} for r in log_a]

    if "evaluate" not in args.skip or "restore" not in args.skip:
        paired = out / "paired"
        ph["degrade"] = run_phase("degrade", lrpo("degrade", str(inputs["faces_list"]), str(paired), "--size", str(args.resolution)), env, logs)
    if "evaluate" not in args.skip:
        files = registry_paths("vgg16-imagenet", "lpips-vgg-v0.1", "inception-fid", "clip-rn50")
        ph["evaluate"] = run_phase("evaluate", lrpo(
            "evaluate", "--paired", str(paired), "--method", f"base=ckpt:{inputs['policy']}", "--method", f"lrpo=ckpt:{straight}",
            "--steps", str(args.steps), "--eta", "0.8", "--reward-preset", "paper", "--captions", str(inputs["captions"]),
            "--lpips-vgg", files["vgg16-imagenet"], "--lpips-lin", files["lpips-vgg-v0.1"], "--inception", files["inception-fid"],
            "--clipiqa", files["clip-rn50"], "--device", args.device, "--batch-size", "2", "--no-progress", "--out", str(out / "eval"),
        ), env, logs)
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        result["evaluate_summary"] = metrics["summary"]
    if "restore" not in args.skip:
        ph["restore_checkpoint"] = run_phase("restore_checkpoint", lrpo(
            "restore", str(paired / "lq"), str(out / "restored_lrpo"), "--aligned", "--checkpoint", str(straight), "--steps", str(args.steps),
            "--device", args.device, "--no-progress"), env, logs)
        published = ["--policy", "sd21-diffbir"] if inputs["policy"] == POLICY_CONFIG else ["--checkpoint", str(inputs["policy"])]
        ph["restore_policy"] = run_phase("restore_policy", lrpo(
            "restore", str(paired / "lq"), str(out / "restored_base"), "--aligned", *published, "--steps", str(args.steps),
            "--device", args.device, "--no-progress"), env, logs)
    if "memory" not in args.skip:
        t0 = time.perf_counter()
        result["memory"] = memory_account(args, inputs, out)
        import resource

        ph["memory"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
