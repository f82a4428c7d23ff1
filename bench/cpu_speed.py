"""The pixel policy on the CPU in four numeric modes, side by side in one run.

    python bench/cpu_speed.py [--threads 2] [--quick] [--out bench/results/cpu_speed.json]

Modes: fp32 eager, fp32 compiled, bf16 eager, bf16 compiled. "Compiled" is what `compile: on` does
(lrpo.policies.compiled): the sampling forward of rollouts, validations and evaluations goes through
torch.compile; the RL update and the pretraining step stay eager in every mode (their graph would
carry the backward, which compiles for minutes on a CPU), so their figures differ by precision only,
and a compiled RL epoch pays for recomputing log pi_old of its trained steps in eager mode.

Figures (the policy of configs/pixel-64.yaml, random weights; batch sizes as configs/lrpo-cpu.yaml):
  forward      no-grad forwards of a batch of 24: ms per batch and sample-forwards/s; also of the
               restoring policy (PixelPolicy.inference_only: activations channels-last on the CPU,
               which `lrpo restore`, `lrpo evaluate` and the demo use; a policy in RL training
               keeps the default layout), at batch 24 and at `lrpo evaluate`'s batch of 8
  rollout      24 trajectories x 20 DDIM steps, latents and log-probs recorded: trajectories/s;
               also with shared-prefix rollouts (branch_step 14: each group of 8 runs steps 0-13
               once, eager, and branches for the last 6; lrpo.diffusion.rollout.branched_rollout)
  update       forward + backward of 24 sample-steps (lrpo-cpu: minibatch 12 x 2 steps): sample-steps/s;
               compiled modes add the eager recomputation of log pi_old (2 steps x 24 trajectories)
  epoch        an lrpo-cpu epoch without the reward: rollout + update (+ recomputation), seconds
  pretrain     one pretraining step at batch 16 (forward, backward, AdamW): steps/s, in the default
               layout and channels-last (PixelPolicy.use_channels_last: what `lrpo pretrain` runs,
               one process at one batch size); in the compiled
               modes also with the step's diffusion forward and backward compiled (and the time
               that took, compiling included), which lrpo does not do: it shows why
  restore      one 512 px face, 10 DDIM steps, batch 1, the restoring policy (what `lrpo restore --aligned`
               and the demo do per face, detection and paste-back left out): seconds per face; the compiled modes
               through a forward compiled for batch 1 (what a long-lived process such as the demo
               could use; `lrpo restore` keeps short jobs eager)
plus compile times, the processor's bf16 capability as torch reports it, and the bf16 outputs'
relative L2 difference from fp32. Each mode is timed in turn, so all four share the machine's state.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import tempfile
from pathlib import Path

# a fresh inductor cache: the compile times below are what a first run pays, not a warm cache's
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lrpo-cpu-speed-inductor-"))

import torch  # noqa: E402  (after the cache folder is chosen)
import torch.nn.functional as F
import yaml

from lrpo.config import PolicyConfig, from_dict
from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.schedules import add_noise, make_alphas_cumprod, training_target
from lrpo.config import DiffusionConfig
from lrpo.policies.sampling import restore_images, sample_generators, sample_trajectories
from lrpo.policies.compiled import CompiledForward
from lrpo.policies.pixel_unet import PixelPolicy
from lrpo.precision import autocast_context, capability

ROOT = Path(__file__).resolve().parents[1]
MODES = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
ROLLOUT_BATCH, ROLLOUT_STEPS, UPDATE_ROWS, TRAINED_STEPS, PRETRAIN_BATCH = 24, 20, 24, 2, 16
GROUP_SIZE, BRANCH_STEP = 8, 14  # lrpo-cpu's groups; the branched rollout of configs/lrpo-cpu-branch.yaml


def build_policy(seed: int = 0) -> PixelPolicy:
    raw = yaml.safe_load((ROOT / "src/lrpo/configs/pixel-64.yaml").read_text())["policy"]
    torch.manual_seed(seed)
    policy = PixelPolicy(from_dict(PolicyConfig, raw))
    with torch.no_grad():  # the zero-initialised output layer would make every output the base image
        policy.unet.out.weight.normal_(0, 0.02)
    return policy.eval()


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_mode(policy: PixelPolicy, precision: str, compiled: bool, reps: int) -> dict:
    res = policy.cfg.resolution
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROLLOUT_BATCH, 3, res, res, generator=g)
    cond = torch.randn(ROLLOUT_BATCH, 6, res, res, generator=g)
    t = torch.full((ROLLOUT_BATCH,), 500)
    fwd = None
    out: dict = {"precision": precision, "compiled": compiled}
    if compiled:
        fwd = CompiledForward(policy, ROLLOUT_BATCH)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast_context("cpu", precision):
            fwd(x, t, cond)
        out["compile_s"] = round(time.perf_counter() - t0, 1)
    net = fwd or policy

    def forward():
        with torch.no_grad(), autocast_context("cpu", precision):
            return net(x, t, cond).float()

    s = timed(forward, reps * 3, warmup=2)
    out["forward_ms_per_batch24"] = round(s * 1000, 1)
    out["sample_forwards_per_s"] = round(ROLLOUT_BATCH / s, 1)
    out["forward_output"] = forward()

    sampler = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), ROLLOUT_STEPS, eta=1.0)
    seeds = list(range(ROLLOUT_BATCH))

    def rollout():
        return sample_trajectories(policy, sampler, cond, sample_generators(seeds), record=True, precision=precision, forward=fwd)

    s = timed(rollout, reps)
    out["rollout_s"] = round(s, 3)
    out["rollout_traj_per_s"] = round(ROLLOUT_BATCH / s, 2)
    traj = rollout()
    cond_groups = cond[::GROUP_SIZE].repeat_interleave(GROUP_SIZE, dim=0)  # a group's members share their condition

    def branched():
        return sample_trajectories(policy, sampler, cond_groups, sample_generators(seeds), record=True, precision=precision, forward=fwd,
                                   group_size=GROUP_SIZE, branch_step=BRANCH_STEP)

    s = timed(branched, reps)
    out["rollout_branched_s"] = round(s, 3)
    out["rollout_branched_traj_per_s"] = round(ROLLOUT_BATCH / s, 2)
    out["update_sample_steps_per_s"], out["update_s"] = _update(policy, sampler, traj, cond, precision, reps)
    out["recompute_s"] = _recompute(policy, sampler, traj, cond, precision, reps) if compiled else 0.0
    out["epoch_without_reward_s"] = round(out["rollout_s"] + out["update_s"] + out["recompute_s"], 3)
    out["pretrain_steps_per_s"] = _pretrain(policy, precision, reps)
    out["pretrain_channels_last_steps_per_s"] = _pretrain(copy.deepcopy(policy).use_channels_last(), precision, reps)
    if compiled:  # what compiling a training step would give: its forward and backward through torch.compile
        t0 = time.perf_counter()
        out["pretrain_compiled_steps_per_s"] = _pretrain(policy, precision, reps, torch.compile(policy, dynamic=False))
        out["pretrain_compiled_total_s"] = round(time.perf_counter() - t0, 1)
    restoring = copy.deepcopy(policy).inference_only()
    out["forward_restoring_ms_per_batch24"] = _forward_ms(restoring, precision, compiled, x, t, cond, reps)
    # lrpo evaluate's batches (8): where `compile: auto` decides for the restoring policy
    out["forward_restoring_ms_per_batch8"] = _forward_ms(restoring, precision, compiled, x[:8], t[:8], cond[:8], reps)
    out["restore_s_per_face_10_steps"] = _restore(restoring, precision, reps, CompiledForward(restoring, 1) if compiled else None)
    return out


def _forward_ms(policy, precision, compiled, x, t, cond, reps) -> float:
    """ms per no-grad forward of the batch ``x`` (compiled mode: a graph of its own for that batch
    size, compiled untimed)."""
    net = CompiledForward(policy, x.shape[0]) if compiled else policy

    def forward():
        with torch.no_grad(), autocast_context("cpu", precision):
            return net(x, t, cond)

    return round(timed(forward, reps * 3, warmup=2) * 1000, 1)


def _rows(traj, cond):
    """The update's rows: each trajectory at 2 trained steps (random:2 of lrpo-cpu)."""
    n = traj.latents.shape[0]
    gen = torch.Generator().manual_seed(2)
    steps = torch.stack([torch.randperm(ROLLOUT_STEPS - 1, generator=gen)[:TRAINED_STEPS] for _ in range(n)])
    rows = torch.arange(n).repeat_interleave(TRAINED_STEPS)
    return rows, steps.reshape(-1)


def _update(policy, sampler, traj, cond, precision, reps) -> tuple[float, float]:
    rows, cols = _rows(traj, cond)
    rows, cols = rows[:UPDATE_ROWS], cols[:UPDATE_ROWS]
    params = [p for p in policy.unet.parameters()]
    opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: the same weights every repeat

    def step():
        x_t = traj.latents[rows, cols]
        with autocast_context("cpu", precision):
            out = policy(x_t, sampler.timesteps[cols], cond[rows])
        st = sampler.step(out.float(), x_t, cols, prediction=policy.prediction, prev_sample=traj.latents[rows, cols + 1])
        loss = -(st.log_prob - traj.log_probs[rows, cols]).exp().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = timed(step, reps * 2)
    # one lrpo-cpu epoch: 24 trajectories x 2 steps = 48 sample-steps
    return round(UPDATE_ROWS / s, 1), round(s * ROLLOUT_BATCH * TRAINED_STEPS / UPDATE_ROWS, 3)


def _recompute(policy, sampler, traj, cond, precision, reps) -> float:
    rows, cols = _rows(traj, cond)

    @torch.no_grad()
    def recompute():
        for s in range(0, len(rows), UPDATE_ROWS):
            i, j = rows[s : s + UPDATE_ROWS], cols[s : s + UPDATE_ROWS]
            with autocast_context("cpu", precision):
                out = policy(traj.latents[i, j], sampler.timesteps[j], cond[i])
            sampler.step(out.float(), traj.latents[i, j], j, prediction=policy.prediction, prev_sample=traj.latents[i, j + 1])

    return round(timed(recompute, reps), 3)


def _pretrain(policy, precision, reps, net=None) -> float:
    """Pretraining steps per second; ``net``: the module that runs the diffusion forward (a compiled one)."""
    net = policy if net is None else net
    res = policy.cfg.resolution
    g = torch.Generator().manual_seed(3)
    hq = torch.rand(PRETRAIN_BATCH, 3, res, res, generator=g)
    lq = (hq + 0.05 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
    alphas = make_alphas_cumprod(DiffusionConfig())
    opt = torch.optim.AdamW(policy.parameters(), lr=0.0)

    def step():
        t = torch.randint(0, 1000, (PRETRAIN_BATCH,), generator=g)
        noise = torch.randn(hq.shape, generator=g)
        with autocast_context("cpu", precision):
            c = policy.condition(lq)
            x0 = policy.encode(hq, c)
            x_t = add_noise(x0, noise, alphas[t])
            loss = F.mse_loss(net(x_t, t, c).float(), training_target(x0, noise, alphas[t], policy.prediction).float())
            loss = loss + F.l1_loss(policy.stage1_restore(lq).float(), hq * 2 - 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return round(1 / timed(step, reps * 2), 2)


def _restore(policy, precision, reps, forward=None) -> float:
    sampler = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), 10, eta=0.0)
    face = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(4))
    return round(timed(lambda: restore_images(policy, sampler, face, [0], precision, forward=forward), reps * 2, warmup=2), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a check that it runs)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cpu_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 1 if args.quick else 3
    policy = build_policy()
    rows = []
    for precision, compiled in MODES:
        print(f"measuring {precision} {'compiled' if compiled else 'eager'} ...", file=sys.stderr, flush=True)
        rows.append(measure_mode(policy, precision, compiled, reps))
        torch._dynamo.reset()  # each compiled mode pays its own compile
    ref, ref_output = rows[0], rows[0]["forward_output"]
    for r in rows:
        a = r.pop("forward_output")
        r["rel_l2_vs_fp32_eager"] = round(float((a - ref_output).norm() / ref_output.norm()), 5)
        for key in ("sample_forwards_per_s", "rollout_traj_per_s", "rollout_branched_traj_per_s", "update_sample_steps_per_s", "pretrain_steps_per_s"):
            r[f"{key}_x"] = round(r[key] / ref[key], 2)
        # against fp32 eager's default layout: what pretraining ran before it went channels-last
        r["pretrain_channels_last_steps_per_s_x"] = round(r["pretrain_channels_last_steps_per_s"] / ref["pretrain_steps_per_s"], 2)
        r["epoch_speedup_x"] = round(ref["epoch_without_reward_s"] / r["epoch_without_reward_s"], 2)
        r["restore_speedup_x"] = round(ref["restore_s_per_face_10_steps"] / r["restore_s_per_face_10_steps"], 2)
        r["forward_restoring_x"] = round(ref["forward_ms_per_batch24"] / r["forward_restoring_ms_per_batch24"], 2)
    result = {
        "bench": "cpu_speed", "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/cpu_speed.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "capability": capability("cpu").describe(), "vector_unit": torch.backends.cpu.get_cpu_capability(),
        "modes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    head = ("| mode | forward ms (x) | restoring forward ms (x) | rollout traj/s (x) | branched rollout traj/s (x) | update sample-steps/s (x) | epoch s (x) "
            "| pretrain steps/s (x) | the same, channels-last | restore s/face (x) | compile s |")
    lines = [head, "|" + "---|" * 11]
    for r in result["modes"]:
        lines.append(
            f"| {r['precision']} {'compiled' if r['compiled'] else 'eager'} | {r['forward_ms_per_batch24']} ({r['sample_forwards_per_s_x']}x) "
            f"| {r['forward_restoring_ms_per_batch24']} ({r['forward_restoring_x']}x) "
            f"| {r['rollout_traj_per_s']} ({r['rollout_traj_per_s_x']}x) | {r['rollout_branched_traj_per_s']} ({r['rollout_branched_traj_per_s_x']}x) "
            f"| {r['update_sample_steps_per_s']} ({r['update_sample_steps_per_s_x']}x) "
            f"| {r['epoch_without_reward_s']} ({r['epoch_speedup_x']}x) | {r['pretrain_steps_per_s']} ({r['pretrain_steps_per_s_x']}x) "
            f"| {r['pretrain_channels_last_steps_per_s']} ({r['pretrain_channels_last_steps_per_s_x']}x) "
            f"| {r['restore_s_per_face_10_steps']} ({r['restore_speedup_x']}x) | {r.get('compile_s', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
