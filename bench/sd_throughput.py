"""Throughput of the SD 2.1 + ControlNet latent policy inside the LRPO trainer (random weights).

Everything is measured on a real ``LRPOTrainer`` (its sampler, its loss, its optimiser step), built
on a temporary policy YAML (``random_init: true``), a temporary folder of synthetic faces and a
one-term reward (brightness, which needs no model file). One JSON document goes to stdout (and to
``--out``, rewritten after every phase, so an interrupted run still leaves its results); progress
goes to stderr. Phases:

  flops    forward FLOPs of one face: torch's FlopCounterMode with scaled_dot_product_attention
           replaced by a zero stub (so no device counts attention: on the CPU the counter misses
           the fused kernel, on CUDA it counts it), plus attention counted analytically from the
           shapes every attention module of the UNet and ControlNet sees (``attention_flops``);
  rollout  faces/s of a full stochastic DDIM rollout (eta 1, latents and log-probs recorded) with
           the trainer's sampler, at batches 9 / 18 / 36;
  collect  faces/s of ``trainer.collect()``: degradation, stage 1, VAE encode, rollout, decode;
  update   sample-steps/s of ``trainer.step_loss`` + backward + ``trainer.optimizer_step()`` at
           micro-batches 6 / 24 / 48, with and without gradient checkpointing; on CUDA the peak
           memory; per setting the first-step ratio check: on the freshly collected batch, before
           any optimiser step, log pi_theta must equal log pi_old (ratio exactly 1);
  trainer_update  one ``trainer.update()`` (every trained step of one minibatch) for the
           end-to-end figure and the trainer's own first-step keys when it reports them;
  compile  (``--compile``) UNet and ControlNet compiled in place: compile time apart from steady
           state, then a second "epoch" (a new collected batch) to show whether the compiled
           graphs are reused (dynamo's frame counters), and a compiled rollout.
The weights are restored (and the optimiser state cleared) before every setting, so each one's
first step sees a batch rolled out by the weights it updates.

Compare with SPEC section 9 (one H100, bf16, random weights): rollout 2.9 / 3.7 / 4.0 faces/s,
update 18 sample-steps/s (micro-batch 6, checkpointing), 97 (48, none), 139 (48, compiled);
1.09 TFLOP per forward.

    python bench/sd_throughput.py --tiny                    # CPU, tiny random networks, seconds
    python bench/sd_throughput.py --full                    # GPU, real sizes, bf16
    python bench/sd_throughput.py --full --compile          # + torch.compile
    python bench/sd_throughput.py --full --flops-only       # FLOPs of the real sizes on the meta device, seconds
bench/gpu_check.py runs the same phases under a time budget, with targets beside the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from lrpo.config import DiffusionConfig, load_config, to_dict
from lrpo.rl.config import LRPOConfig
from lrpo.data.images import save_rgb
from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.schedules import make_alphas_cumprod
from lrpo.policies.sampling import sample_generators, sample_trajectories
from lrpo.policies.latent import LatentPolicy, enable_gradient_checkpointing
from lrpo.policies.latent_config import LatentPolicyConfig
from lrpo.rl.trainer import LRPOTrainer, RolloutBatch

GROUP_SIZE = 9  # G of the reference (SPEC section 3): a rollout batch of 36 is 4 groups


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def set_checkpointing(policy: LatentPolicy, on: bool) -> None:
    """Per-block activation checkpointing of UNet and ControlNet on or off (policy.cfg follows)."""
    if on:
        enable_gradient_checkpointing(policy.unet)
        enable_gradient_checkpointing(policy.controlnet)
    else:
        for m in [*policy.unet.modules(), *policy.controlnet.modules()]:
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = False
    policy.cfg.gradient_checkpointing = on


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------
def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, v_dim: int | None = None) -> int:
    """FLOPs of softmax(Q K^T / sqrt(d)) V for Q [B, h, Lq, d], K [B, h, Lk, d], V [B, h, Lk, d_v].

    Each multiply-add counts 2, as torch's FLOP counter counts matrix products:
    Q K^T is 2 B h Lq Lk d, A V is 2 B h Lq Lk d_v. Scale and softmax (O(B h Lq Lk)) are not counted.
    """
    v_dim = head_dim if v_dim is None else v_dim
    return 2 * batch * heads * q_len * k_len * head_dim + 2 * batch * heads * q_len * k_len * v_dim


@dataclass
class AttentionCall:
    module: str
    batch: int
    heads: int
    q_len: int
    k_len: int
    head_dim: int
    v_dim: int

    @property
    def flops(self) -> int:
        return attention_flops(self.batch, self.heads, self.q_len, self.k_len, self.head_dim, self.v_dim)


def _is_attention(m: nn.Module) -> bool:
    """diffusers' ``Attention`` (duck-typed: its class moved between diffusers versions)."""
    return all(hasattr(m, a) for a in ("to_q", "to_k", "to_v", "heads", "processor"))


@contextlib.contextmanager
def attention_walk(policy: LatentPolicy) -> Iterator[list[AttentionCall]]:
    """Record, for every call of an attention module of the UNet and ControlNet, the query and key
    lengths and head sizes it is called with (self-attention: Lk = Lq = h w; cross: Lk = 77)."""
    calls: list[AttentionCall] = []
    handles = []

    def hook(name: str):
        def record(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            batch = hidden.shape[0]
            q_len = math.prod(hidden.shape[2:]) if hidden.ndim == 4 else hidden.shape[1]  # [B, C, H, W] or [B, L, C]
            k_len = q_len if context is None else context.shape[1]
            heads = mod.heads
            calls.append(AttentionCall(name, batch, heads, q_len, k_len, mod.to_q.out_features // heads, mod.to_v.out_features // heads))

        return record

    for part in ("unet", "controlnet"):
        for name, m in getattr(policy, part).named_modules():
            if _is_attention(m):
                handles.append(m.register_forward_pre_hook(hook(f"{part}.{name}"), with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def sdpa_excluded() -> Iterator[None]:
    """Make F.scaled_dot_product_attention return zeros of its output shape, so the FLOP counter
    sees no attention on any device (diffusers looks the function up on each call)."""
    F = torch.nn.functional
    original = F.scaled_dot_product_attention

    def stub(query: Tensor, key: Tensor, value: Tensor, *args, **kwargs) -> Tensor:
        return query.new_zeros(*query.shape[:-1], value.shape[-1])

    F.scaled_dot_product_attention = stub
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _count(policy: LatentPolicy, x: Tensor, t: Tensor, exclude_sdpa: bool) -> tuple[float, dict[str, float]]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), (sdpa_excluded() if exclude_sdpa else contextlib.nullcontext()), counter:
        policy(x, t, x)
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def forward_flops(policy: LatentPolicy, device: torch.device, batch: int = 1) -> dict:
    """FLOPs of one UNet + ControlNet forward on ``batch`` faces (x_t and condition random).

    ``total`` = the counter's figure with attention excluded + attention counted analytically;
    ``counter_default`` is what the counter says untouched (on the CPU: no attention at all).
    """
    c = policy.cfg.unet.latent_channels
    side = policy.cfg.latent_size
    x = torch.randn(batch, c, side, side, device=device)
    t = torch.full((batch,), 500, device=device)
    with attention_walk(policy) as calls:
        non_attention, by_op = _count(policy, x, t, exclude_sdpa=True)
    attention = float(sum(call.flops for call in calls))
    default = None if device.type == "meta" else _count(policy, x, t, exclude_sdpa=False)[0]
    self_calls = [call for call in calls if call.k_len == call.q_len]
    return {
        "batch": batch,
        "counter_non_attention": non_attention,
        "attention_analytic": attention,
        "total": non_attention + attention,
        "total_tflop_per_face": (non_attention + attention) / batch / 1e12,
        "counter_default": default,
        "attention_calls": len(calls),
        "attention_self_flops": float(sum(call.flops for call in self_calls)),
        "attention_cross_flops": attention - float(sum(call.flops for call in self_calls)),
        "counter_by_op": by_op,
    }


def meta_flops(size: str) -> dict:
    """``forward_flops`` of a policy built on the meta device: no weights, no compute, seconds."""
    cfg = LatentPolicyConfig.preset(size, random_init=True)
    with torch.device("meta"):
        policy = LatentPolicy(cfg)
    return forward_flops(policy, torch.device("meta"))


# ----------------------------------------------------------------------------------------------
# the trainer under test
# ----------------------------------------------------------------------------------------------
def write_faces(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` synthetic face-like RGB PNGs (gradient, ellipse, two eyes, texture), seeded."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(count):
        img = rng.uniform(0.2, 0.7, size=3) * (0.6 + 0.4 * yy[..., None]) + rng.uniform(-0.2, 0.2) * xx[..., None]
        cy, cx = 0.5 + rng.uniform(-0.05, 0.05, size=2)
        face = ((yy - cy) / 0.35) ** 2 + ((xx - cx) / 0.26) ** 2 < 1
        img[face] = 0.5 * img[face] + 0.5 * rng.uniform(0.4, 0.9, size=3)
        for ex in (cx - 0.1, cx + 0.1):
            img[(yy - cy + 0.09) ** 2 + (xx - ex) ** 2 < 0.05**2] = 0.1
        img += rng.normal(0.0, 0.03, size=img.shape)
        save_rgb(folder / f"face_{i:02d}.png", (np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def policy_yaml(path: Path, size: str, precision: str) -> LatentPolicyConfig:
    """A policy YAML like configs/policy-sd21-diffbir.yaml with random weights of ``size``."""
    cfg = LatentPolicyConfig.preset(size, random_init=True, precision=precision, stage1="swinir")
    raw = {"policy": to_dict(cfg), "diffusion": to_dict(DiffusionConfig())}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg


def build_trainer(
    size: str, device: torch.device, precision: str, steps: int, work: Path, groups: int, groups_per_batch: int
) -> LRPOTrainer:
    """An LRPOTrainer on the random latent policy: G = 9, ``groups`` groups per epoch, one term
    of reward (brightness), per-timestep updates as in the reference."""
    policy_file = work / "policy.yaml"
    cfg = policy_yaml(policy_file, size, precision)
    write_faces(work / "faces", count=max(groups, 2), size=cfg.resolution)
    overrides = [
        f"init_checkpoint={policy_file}",
        f"out_dir={work / 'run'}",
        f"device={device}",
        f"precision={precision}",
        f"group_size={GROUP_SIZE}",
        f"groups_per_epoch={groups}",
        f"rollout_groups_per_batch={groups_per_batch}",
        f"sample_steps={steps}",
        "update_mode=per_timestep",
        f"data.hq={work / 'faces'}",
        f"data.resolution={cfg.resolution}",
        "data.val_count=0",
        "reward.preset=''",
        "reward.terms={brightness: {weight: 1.0}}",
        "reward.device=auto",
        f"degradation.kernel_size={41 if size == 'full' else 21}",
    ]
    return LRPOTrainer(load_config(LRPOConfig, None, overrides), progress=False)


class Snapshot:
    """The trainable weights as built; ``restore`` puts them back and clears the AdamW state, so
    a batch collected from the snapshot is fresh (ratio 1) for the next setting's first step."""

    def __init__(self, trainer: LRPOTrainer):
        self.trainer = trainer
        self.saved = [p.detach().clone() for p in trainer.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, s in zip(self.trainer.params, self.saved):
            p.copy_(s)
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.trainer.optimizer.state.clear()


# ----------------------------------------------------------------------------------------------
# rollouts
# ----------------------------------------------------------------------------------------------
def bench_rollout(trainer: LRPOTrainer, batch: int) -> dict:
    """The trainer's sampler and precision on a random condition: S stochastic DDIM steps with
    latents and log-probs recorded, as collect() runs them (no degradation, no VAE)."""
    policy, device, cfg = trainer.policy, trainer.device, trainer.cfg
    side = policy.cfg.latent_size
    cond = torch.randn(batch, policy.cfg.vae.latent_channels, side, side, generator=torch.Generator().manual_seed(batch)).to(device)
    warm_sampler = DDIMSampler(make_alphas_cumprod(trainer.diffusion_cfg), 2, cfg.eta)
    _, warm_s = timed(lambda: sample_trajectories(policy, warm_sampler, cond, sample_generators(range(batch)), precision=cfg.precision), device)
    reset_peak(device)
    _, dt = timed(lambda: sample_trajectories(policy, trainer.sampler, cond, sample_generators(range(batch)), precision=cfg.precision), device)
    steps = len(trainer.sampler)
    return {
        "batch": batch, "steps": steps, "seconds": dt, "faces_per_s": batch / dt, "face_steps_per_s": batch * steps / dt,
        "warmup_seconds_2_steps": warm_s, "peak_gib": peak_gib(device),
    }


def bench_collect(trainer: LRPOTrainer, epoch: int) -> tuple[dict, RolloutBatch]:
    reset_peak(trainer.device)
    batch, dt = timed(lambda: trainer.collect(epoch), trainer.device)
    n = len(batch.seeds)
    return {
        "epoch": epoch, "trajectories": n, "rollout_batch": trainer.cfg.rollout_groups_per_batch * trainer.cfg.group_size,
        "seconds": dt, "faces_per_s": n / dt, "peak_gib": peak_gib(trainer.device),
    }, batch


# ----------------------------------------------------------------------------------------------
# updates
# ----------------------------------------------------------------------------------------------
@dataclass
class UpdateData:
    """One collected batch with what the update needs: per-step advantages [N, S], keep [N], the
    GT-path targets [K, N, ...] (None without the GT term) and the advantage statistics."""

    batch: RolloutBatch
    adv: Tensor
    keep: Tensor
    gt: Tensor | None
    stats: dict


def prepare_update(trainer: LRPOTrainer, batch: RolloutBatch, epoch: int) -> UpdateData:
    rewards, _ = trainer.score(batch, epoch)
    adv, keep, stats = trainer.advantages(rewards, batch.group_ids)
    return UpdateData(batch, adv.to(trainer.device), keep, trainer.gt_targets(batch), stats)


def ratio_of(stats: dict) -> dict:
    """The first-step check from step_loss's statistics."""
    return {"max_abs_log_ratio": stats["max_abs_log_ratio"], "clip_fraction": stats["clip_fraction"]}


def _indices(data: UpdateData, micro: int, device: torch.device) -> Tensor:
    """``micro`` kept trajectories (repeated when the batch holds fewer)."""
    kept = data.keep.nonzero().flatten()
    if not len(kept):
        kept = torch.arange(len(data.keep))
    return kept[torch.arange(micro) % len(kept)].to(device)


def update_step(trainer: LRPOTrainer, data: UpdateData, idx: Tensor, j: int) -> dict:
    """One reference update step: trajectories ``idx`` at step j, loss, backward, optimiser step."""
    steps = torch.full((len(idx),), j, dtype=torch.long, device=trainer.device)
    loss, stats = trainer.step_loss(data.batch, idx, steps, data.adv, data.gt)
    loss.backward()
    stats["grad_norm"] = trainer.optimizer_step()
    return stats


def ratio_probe(trainer: LRPOTrainer, data: UpdateData, idx: Tensor, steps: list[int], grad: bool = True) -> dict:
    """Forward-only step_loss (grad enabled, as in training, unless ``grad`` is False) at ``steps``
    before any optimiser step: step index -> max |log ratio| and clip fraction."""
    out = {}
    for j in steps:
        with torch.set_grad_enabled(grad):
            loss, stats = trainer.step_loss(data.batch, idx, torch.full((len(idx),), j, device=trainer.device), data.adv, data.gt)
        del loss
        out[str(j)] = ratio_of(stats)
    return out


def same_batch_probe(trainer: LRPOTrainer, snap: Snapshot, data: UpdateData) -> dict:
    """The ratio check on the rollout's own batch (all N trajectories in order, as they were rolled
    out), with and without grad: when this is exact and the micro-batch check is not, the mismatch
    comes from the batch shape (kernel choice), not from the update's code path."""
    snap.restore()
    idx = torch.arange(len(data.keep), device=trainer.device)
    steps = sorted({0, trainer.n_train // 2, trainer.n_train - 1})
    return {"batch": len(idx), "grad": ratio_probe(trainer, data, idx, steps), "no_grad": ratio_probe(trainer, data, idx, steps, grad=False)}


def bench_update(
    trainer: LRPOTrainer, snap: Snapshot, data: UpdateData, micro: int, checkpointing: bool, iters: int,
    compiled: bool = False, probe_steps: bool = True,
) -> dict:
    """Restore the weights, take the first optimiser step on the fresh batch (ratio check, compile
    and allocator warm-up timed apart), then ``iters`` timed steps spread over the trained steps."""
    device, n_train = trainer.device, trainer.n_train
    snap.restore()
    set_checkpointing(trainer.policy, checkpointing)
    idx = _indices(data, micro, device)
    res: dict[str, Any] = {"micro_batch": micro, "checkpointing": checkpointing, "compiled": compiled}
    reset_peak(device)
    if probe_steps and n_train > 1:
        res["ratio_probe_before_first_step"] = ratio_probe(trainer, data, idx, sorted({n_train // 2, n_train - 1}))
    stats, first_s = timed(lambda: update_step(trainer, data, idx, 0), device)
    res["first_step"] = {"step": 0, **ratio_of(stats)}
    res["first_step_seconds"] = first_s
    res["peak_gib_first_step"] = peak_gib(device)
    plan = [round(k * (n_train - 1) / max(iters - 1, 1)) for k in range(iters)]  # includes the GT-term steps
    reset_peak(device)
    sums: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()
    for j in plan:
        for k, v in update_step(trainer, data, idx, j).items():
            sums[k] = sums.get(k, 0.0) + v
    sync(device)
    dt = (time.perf_counter() - t0) / len(plan)
    res.update(
        seconds_per_step=dt, sample_steps_per_s=micro / dt, peak_gib=peak_gib(device), timed_steps=plan,
        mean_stats={k: v / len(plan) for k, v in sums.items()},
    )
    return res


def bench_trainer_update(trainer: LRPOTrainer, snap: Snapshot, data: UpdateData, micro: int, checkpointing: bool, epoch: int) -> dict:
    """``trainer.update()`` on ``micro`` kept trajectories: one minibatch, every trained step."""
    snap.restore()
    set_checkpointing(trainer.policy, checkpointing)
    keep = torch.zeros_like(data.keep)
    keep[data.keep.nonzero().flatten()[:micro]] = True
    saved_mb = trainer.cfg.minibatch_size
    trainer.cfg.minibatch_size = micro
    try:
        out, dt = timed(lambda: trainer.update(data.batch, data.adv, keep, epoch), trainer.device)
    finally:
        trainer.cfg.minibatch_size = saved_mb
    n = int(keep.sum())
    first = {k[len("first_"):]: out[k] for k in ("first_max_abs_log_ratio", "first_clip_fraction") if k in out}
    return {
        "micro_batch": n, "checkpointing": checkpointing, "optimizer_steps": trainer.n_train, "seconds": dt,
        "sample_steps_per_s": n * trainer.n_train / dt, "first_step": first, "update_stats": out,
    }


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------
def compile_policy(policy: LatentPolicy, backend: str, mode: str | None) -> None:
    """Compile UNet and ControlNet in place (static shapes): the trainer calls the same objects."""
    for m in (policy.controlnet, policy.unet):
        m.compile(backend=backend, mode=mode, dynamic=False)


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames_compiled": int(counters["frames"]["ok"]), "unique_graphs": int(counters["stats"]["unique_graphs"])}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


# ----------------------------------------------------------------------------------------------
# budget, report, phases
# ----------------------------------------------------------------------------------------------
class BudgetExceeded(Exception):
    pass


class Budget:
    """Wall-clock budget of a run (None: unlimited). ``arm`` sets a SIGALRM at the deadline that
    raises BudgetExceeded in the main thread, the backstop for a compilation that runs long."""

    def __init__(self, total_s: float | None):
        self.start = time.perf_counter()
        self.total_s = total_s

    def left(self) -> float:
        return math.inf if self.total_s is None else self.total_s - (time.perf_counter() - self.start)

    def arm(self) -> None:
        if self.total_s is None or not hasattr(signal, "setitimer"):
            return

        def expire(signum, frame):
            raise BudgetExceeded(f"the run's {self.total_s:.0f} s budget is spent")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))

    def disarm(self) -> None:
        if self.total_s is not None and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)


class Phase:
    """A phase's own deadline (its share, within the run's); ``skip_reason`` says why the next
    item, estimated to take ``need_s``, would not fit."""

    def __init__(self, budget: Budget, share_s: float | None):
        self.start = time.perf_counter()
        self.deadline = min(budget.left(), math.inf if share_s is None else share_s)

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.start)

    def skip_reason(self, need_s: float) -> str | None:
        left = self.left()
        return None if need_s <= left else f"skipped: needs about {need_s:.0f} s, {max(left, 0):.0f} s left in the phase's budget"


class Report:
    """The JSON document, rewritten (atomically) to ``path`` after every phase."""

    def __init__(self, path: str | None, doc: dict, finalize: Callable[[dict], None] | None = None):
        self.path = Path(path) if path else None
        self.doc = doc
        self.finalize = finalize  # brings derived entries (gpu_check's summary) up to date

    def write(self) -> None:
        if self.finalize is not None:
            self.finalize(self.doc)
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=_json_default) + "\n")
        os.replace(tmp, self.path)

    def text(self) -> str:
        return json.dumps(self.doc, indent=1, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (torch.Tensor, np.generic)):
        return o.tolist()
    return str(o)


def run_phase(report: Report, budget: Budget, name: str, share_s: float | None, fn: Callable[[Phase], Any]) -> None:
    """Run one phase; record its time and status (done, skipped with the reason, or an error),
    then write the report. BudgetExceeded propagates after recording, ending the run."""
    status = report.doc.setdefault("phases", {})
    if budget.left() <= 0:
        status[name] = {"status": "skipped: the run's budget is spent"}
        report.write()
        return
    phase = Phase(budget, share_s)
    log(f"[{name}] (budget {phase.deadline:.0f} s)")
    try:
        fn(phase)
        status[name] = {"status": "done"}
    except BudgetExceeded as e:
        status[name] = {"status": f"stopped: {e}"}
        raise
    except torch.OutOfMemoryError as e:
        status[name] = {"status": f"out of memory: {str(e)[:300]}"}
        torch.cuda.empty_cache()
    except Exception as e:  # a failed phase must not cost the others their results
        if _from_budget(e):  # dynamo wraps what the alarm raised inside a compilation
            status[name] = {"status": f"stopped: the run's {budget.total_s:.0f} s budget is spent (inside {type(e).__name__})"}
            raise BudgetExceeded(status[name]["status"]) from e
        status[name] = {"status": f"error: {type(e).__name__}: {str(e)[:300]}"}
        log(traceback.format_exc())
    finally:
        status[name]["seconds"] = round(time.perf_counter() - phase.start, 2)
        report.write()


def _from_budget(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, BudgetExceeded) or "BudgetExceeded" in str(e)[:2000]:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@dataclass
class Plan:
    """What to run (defaults: the SPEC's settings) and each phase's share of the budget (s)."""

    rollout_batches: tuple[int, ...] = (9, 18, 36)
    micro_batches: tuple[int, ...] = (6, 24, 48)
    iters: int = 5
    trainer_update: tuple[int, bool] | None = (6, True)  # (micro-batch, checkpointing), None = skip
    compile: bool = False
    compile_micro_batches: tuple[int, ...] = (48,)
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    compile_guess_s: float = 0.0  # seconds a first compilation is assumed to need (skip when less is left)
    shares: dict[str, float] | None = None  # phase -> seconds; None = unlimited

    def share(self, phase: str) -> float | None:
        return None if self.shares is None else self.shares.get(phase)


def _skip_or_run(phase: Phase, need_s: float, item: dict, fn: Callable[[], dict]) -> dict:
    reason = phase.skip_reason(need_s)
    if reason:
        return {**item, "skipped": reason}
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**item, "error": "out of memory"}


def run_plan(trainer: LRPOTrainer, plan: Plan, report: Report, budget: Budget) -> None:
    """All phases in order of importance; the report is complete or says what was skipped."""
    doc, device = report.doc, trainer.device
    state: dict[str, Any] = {"snap": Snapshot(trainer)}

    def flops(phase: Phase) -> None:
        doc["flops"] = forward_flops(trainer.policy, device)
        f = doc["flops"]
        log(f"  {f['total_tflop_per_face']:.4f} TFLOP/face = {f['counter_non_attention'] / 1e12:.4f} counted + "
            f"{f['attention_analytic'] / 1e12:.4f} attention (analytic); counter untouched: {f['counter_default']}")

    def rollout(phase: Phase) -> None:
        doc["rollout"] = []
        per_face = None
        for b in plan.rollout_batches:
            need = 0 if per_face is None else per_face * b * 1.3
            r = _skip_or_run(phase, need, {"batch": b}, lambda: bench_rollout(trainer, b))
            if "faces_per_s" in r:
                per_face = 1 / r["faces_per_s"]
                log(f"  batch {b}: {r['faces_per_s']:.3f} faces/s ({r['seconds']:.2f} s)")
            doc["rollout"].append(r)
            report.write()

    def collect(phase: Phase) -> None:
        r, batch = bench_collect(trainer, epoch=0)
        doc["collect"] = r
        state["data"] = prepare_update(trainer, batch, 0)
        doc["collect"]["advantage_stats"] = state["data"].stats
        log(f"  {r['trajectories']} trajectories: {r['faces_per_s']:.3f} faces/s ({r['seconds']:.2f} s)")
        if plan.compile:  # the compiled update's second epoch needs a new batch from the same weights
            r2, batch2 = bench_collect(trainer, epoch=1)
            doc["collect_epoch_1"] = r2
            state["data2"] = prepare_update(trainer, batch2, 1)

    def update(phase: Phase) -> None:
        doc["ratio_same_batch"] = same_batch_probe(trainer, state["snap"], state["data"])
        doc["update"] = []
        last: dict | None = None
        for ckpt in (True, False):
            for m in plan.micro_batches:
                need = 0 if last is None else last["seconds"] * m / last["micro"]
                t0 = time.perf_counter()
                u = _skip_or_run(phase, need, {"micro_batch": m, "checkpointing": ckpt},
                                 lambda: bench_update(trainer, state["snap"], state["data"], m, ckpt, plan.iters))
                if "sample_steps_per_s" in u:
                    last = {"seconds": time.perf_counter() - t0, "micro": m}
                    log(f"  micro-batch {m:>2}, checkpointing {ckpt!s:>5}: {u['sample_steps_per_s']:.2f} sample-steps/s, "
                        f"first step max|log ratio| {u['first_step']['max_abs_log_ratio']:.3g}, peak {u['peak_gib']} GiB")
                doc["update"].append(u)
                report.write()

    def trainer_update(phase: Phase) -> None:
        m, ckpt = plan.trainer_update
        doc["trainer_update"] = bench_trainer_update(trainer, state["snap"], state["data"], m, ckpt, epoch=0)
        log(f"  update(): {doc['trainer_update']['sample_steps_per_s']:.2f} sample-steps/s")

    def compiled(phase: Phase) -> None:
        doc["compile"] = run_compile(trainer, state, plan, report, phase)

    for name, fn in (("flops", flops), ("rollout", rollout), ("collect", collect), ("update", update)):
        run_phase(report, budget, name, plan.share(name), fn)
    if "data" not in state:
        return
    if plan.trainer_update:
        run_phase(report, budget, "trainer_update", plan.share("trainer_update"), trainer_update)
    if plan.compile:  # last: a compilation that outlasts the budget is cut by the alarm
        run_phase(report, budget, "compile", plan.share("compile"), compiled)


def run_compile(trainer: LRPOTrainer, state: dict, plan: Plan, report: Report, phase: Phase) -> dict:
    """UNet and ControlNet compiled in place, most important first:
      1. the update on epoch 0's batch: the first optimiser step holds the compilation (timed apart);
      2. a second epoch: the update on epoch 1's batch (a new RolloutBatch of the same shapes): its
         first step is fast and dynamo compiles no frame when the graphs are reused;
      3. if time is left: a batch collected by the compiled policy (the no-grad graph compiles) and
         the update on it (ratio check compiled rollout vs compiled update), a compiled rollout.
    Both eager batches were rolled out by the eager policy from the snapshot weights."""
    out: dict[str, Any] = {"backend": plan.compile_backend, "mode": plan.compile_mode or "default", "dynamic": False, "updates": []}
    report.doc["compile"] = out
    before = dynamo_counts()
    compile_policy(trainer.policy, plan.compile_backend, plan.compile_mode)
    snap = state["snap"]
    for m in plan.compile_micro_batches:
        reason = phase.skip_reason(plan.compile_guess_s if not out["updates"] else out["updates"][-1].get("compile_seconds", 0))
        if reason:
            out["updates"].append({"micro_batch": m, "skipped": reason})
            continue
        c0 = dynamo_counts()
        # no forward-only probe first: the first optimiser step then holds the whole compilation
        u = bench_update(trainer, snap, state["data"], m, False, plan.iters, compiled=True, probe_steps=False)
        u.update(batch_epoch=0, rollout="eager", dynamo=_delta(dynamo_counts(), c0),
                 compile_seconds=max(u["first_step_seconds"] - u["seconds_per_step"], 0.0))
        out["updates"].append(u)
        report.write()
        log(f"  compiled micro-batch {m}: {u['sample_steps_per_s']:.2f} sample-steps/s after {u['compile_seconds']:.1f} s compiling "
            f"({u['dynamo']['frames_compiled']} frames)")
    done = [u for u in out["updates"] if "sample_steps_per_s" in u]
    if not done:
        return out
    m = done[-1]["micro_batch"]
    steady = done[-1]["seconds_per_step"] * (plan.iters + 3)
    out["second_epoch"] = _second_epoch(trainer, snap, state["data2"], 1, m, plan, phase, steady, rollout="eager")
    report.write()
    # a batch rolled out by the compiled policy (compiles the no-grad graph: guess half the update's)
    guess = report.doc["collect"]["seconds"] * 1.5 + 0.5 * done[-1]["compile_seconds"] + steady
    reason = phase.skip_reason(guess)
    if reason:
        out["compiled_rollout_epoch"] = {"skipped": reason}
        return out
    snap.restore()
    c0 = dynamo_counts()
    collect3, batch3 = bench_collect(trainer, epoch=2)
    collect3.update(dynamo=_delta(dynamo_counts(), c0), rollout="compiled",
                    compile_seconds_upper_bound=max(collect3["seconds"] - report.doc["collect"]["seconds"], 0.0))
    out["collect_compiled"] = collect3
    report.write()
    out["compiled_rollout_epoch"] = _second_epoch(trainer, snap, prepare_update(trainer, batch3, 2), 2, m, plan, phase, steady, rollout="compiled")
    report.write()
    b = max(plan.rollout_batches)
    reason = phase.skip_reason(b / collect3["faces_per_s"] * 1.5)
    c0 = dynamo_counts()
    out["rollout"] = {"batch": b, "skipped": reason} if reason else bench_rollout(trainer, b)
    out["rollout"]["dynamo"] = _delta(dynamo_counts(), c0)
    out["dynamo_total"] = _delta(dynamo_counts(), before)
    return out


def _second_epoch(
    trainer: LRPOTrainer, snap: Snapshot, data: UpdateData, epoch: int, micro: int, plan: Plan, phase: Phase, need_s: float,
    rollout: str,
) -> dict:
    """The compiled update on another epoch's batch; graph_reused = dynamo compiled no frame."""
    reason = phase.skip_reason(need_s)
    if reason:
        return {"micro_batch": micro, "skipped": reason}
    c0 = dynamo_counts()
    u = bench_update(trainer, snap, data, micro, False, plan.iters, compiled=True)
    u.update(batch_epoch=epoch, rollout=rollout, dynamo=_delta(dynamo_counts(), c0))
    u["graph_reused"] = u["dynamo"]["frames_compiled"] == 0
    log(f"  compiled micro-batch {micro}, new batch ({rollout} rollout): {u['sample_steps_per_s']:.2f} sample-steps/s, "
        f"first step {u['first_step_seconds']:.2f} s, frames compiled {u['dynamo']['frames_compiled']}")
    return u


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def add_common_args(ap: argparse.ArgumentParser) -> None:
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny random networks (default without CUDA)")
    size.add_argument("--full", action="store_true", help="the reference sizes, random weights (default with CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="policy and trainer precision (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps per rollout (default 50)")
    ap.add_argument("--rollout-batches", type=int, nargs="+", default=[9, 18, 36])
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[6, 24, 48])
    ap.add_argument("--iters", type=int, default=5, help="timed update steps per setting (default 5)")
    ap.add_argument("--collect-groups", type=int, default=4, help="groups of 9 per collected epoch, all in one rollout batch (default 4 = 36)")
    ap.add_argument("--compile-micro-batches", type=int, nargs="+", default=[48])
    ap.add_argument("--compile-backend", default="auto",
                    help="torch.compile backend (auto: inductor on CUDA, aot_eager elsewhere: inductor's C++ build of the tiny nets takes minutes on 2 cores; eager: dynamo alone, quickest)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    ap.add_argument("--no-trainer-update", action="store_true", help="skip the trainer.update() phase")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: 1 for tiny on CPU, else torch's default)")
    ap.add_argument("--out", help="also write the JSON here (rewritten after every phase)")


def setup_run(args: argparse.Namespace) -> tuple[torch.device, str, str]:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    size = "full" if args.full or (not args.tiny and device.type == "cuda") else "tiny"
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads or (size == "tiny" and device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)  # tiny work: threads only add contention
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, size, precision


def header(trainer: LRPOTrainer, size: str, precision: str, build_s: float) -> dict:
    device, policy = trainer.device, trainer.policy
    return {
        "config": size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision, "torch": torch.__version__, "build_seconds": build_s,
        "sample_steps": len(trainer.sampler), "trained_steps": trainer.n_train, "reg_steps": trainer.reg_steps,
        "clip_range": trainer.cfg.clip_range,
        "params_m": {k: sum(p.numel() for p in getattr(policy, k).parameters()) / 1e6 for k in ("unet", "controlnet", "vae")},
    }


def plan_from_args(args: argparse.Namespace) -> Plan:
    backend = args.compile_backend
    if backend == "auto":
        backend = "inductor" if setup_run(args)[0].type == "cuda" else "aot_eager"
    return Plan(
        rollout_batches=tuple(args.rollout_batches), micro_batches=tuple(args.micro_batches), iters=args.iters,
        trainer_update=None if args.no_trainer_update else (6, True), compile=getattr(args, "compile", True),
        compile_micro_batches=tuple(args.compile_micro_batches), compile_backend=backend, compile_mode=args.compile_mode,
    )


def run(args: argparse.Namespace, plan: Plan, budget: Budget, extra: Callable[[dict], None] | None = None) -> Report:
    """Build the trainer in a temporary folder, run the plan, return the report (written to --out)."""
    device, size, precision = setup_run(args)
    with tempfile.TemporaryDirectory(prefix="lrpo-bench-") as work:
        t0 = time.perf_counter()
        trainer = build_trainer(size, device, precision, args.steps, Path(work), args.collect_groups, args.collect_groups)
        build_s = time.perf_counter() - t0
        log(f"built the {size} trainer on {device} ({precision}) in {build_s:.1f} s")
        report = Report(args.out, header(trainer, size, precision, build_s), finalize=extra)
        report.doc["budget_seconds"] = budget.total_s
        report.doc["plan"] = dataclasses.asdict(plan)
        budget.arm()
        try:
            run_plan(trainer, plan, report, budget)
        except BudgetExceeded as e:
            report.doc["stopped"] = str(e)
            log(f"stopped: {e}")
        finally:
            budget.disarm()
        report.doc["wall_seconds"] = round(time.perf_counter() - budget.start, 2)
        report.write()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--compile", action="store_true", help="also run the torch.compile phase")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the run (default: none)")
    ap.add_argument("--flops-only", action="store_true", help="only the FLOP count (--device meta: no weights, seconds)")
    args = ap.parse_args(argv)
    if args.flops_only:
        size = "full" if args.full or (not args.tiny and torch.cuda.is_available()) else "tiny"
        doc = {"config": size, "flops": meta_flops(size)}
        print(json.dumps(doc, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    report = run(args, plan_from_args(args), Budget(args.budget_s))
    print(report.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
