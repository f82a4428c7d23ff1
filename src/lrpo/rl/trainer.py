"""The LRPO trainer (``lrpo train``): collect -> score -> advantages -> update, per epoch.

One epoch (SPEC sections 2-6):
  1. collect   for each group of this process: degrade its HQ face once (the group's own seed), roll
               out G trajectories with the stochastic DDIM sampler (eta = 1), recording latents and
               per-step log-probs; each trajectory has its own seed, so nothing depends on batching
               or on the number of processes;
  2. score     decode the final samples and score them with the composite reward (every term kept);
  3. advantages group-relative, divided by the global std (rewards all-gathered), weighted per step
               by sigma_j / mean(sigma) and clipped; groups with equal rewards are dropped;
  4. update    PPO-clip on the first floor(fraction * S) steps, plus the GT-guided likelihood term
               on the last K of them, one optimiser step per (minibatch, step) as in the reference
               or accumulated over steps.
Checkpoints are written after an epoch completes (atomically), so a crash or a NaN loses at most
the epochs since the last checkpoint and ``--resume`` continues exactly. Ctrl-C (SIGINT) or SIGTERM
loses nothing: rollouts in flight are abandoned, an update in flight is finished, and the last
completed epoch is checkpointed before the run stops (:class:`~lrpo.runs.Interrupted`). A run folder
holds one run (:func:`~lrpo.runs.claim_run_dir`); a resume must not change the run's settings
(:data:`~lrpo.rl.checkpointing.RESUMABLE_KEYS` may change).

The policy stays in eval mode for rollouts *and* updates: log pi_old is recorded by the rollout's
network function, and the update must recompute exactly that function (dropout in train mode would
make the ratio differ from 1 before any optimiser step). Gradients do not depend on the mode.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import checkpoint as ckpt_io
from ..config import DEGRADATION_PRESETS, resolve_device, save_config
from ..data.captions import Captions, require_captions
from ..data.datasets import FaceImageSet
from ..data.groups import Group, GroupSampler, derive_seed, make_group_lq
from ..degradation import degrade
from ..diffusion.ddim import DDIMSampler, gaussian_log_prob
from ..diffusion.schedules import make_alphas_cumprod
from ..distributed import DistContext, all_gather_cat, all_reduce_max, all_reduce_sum, barrier, broadcast_floats, init_from_env
from ..ema import EMA
from ..engine import make_engine
from ..eval.metrics import psnr, ssim
from ..policies.compiled import CompiledForward, compile_decision
from ..policies.loading import load_policy
from ..policies.sampling import sample_generators, sample_trajectories
from ..precision import autocast_context, resolve_precision
from ..rewards import RewardInput, build_composite
from ..runs import GracefulInterrupt, Interrupted, claim_run_dir, clear_run_dir, record_written
from .advantages import group_advantages, noise_level_weights, step_advantages
from .checkpointing import RESUMABLE_KEYS, CheckpointMethods
from .config import LRPOConfig
from .diagnostics import gradient_balance, group_signal_to_noise, shift_one_pixel
from .guards import GuardMetrics
from .losses import gt_likelihood_regularizer, gt_path, kl_to_reference, num_train_steps, ppo_clip_loss
from .records import RunRecordMethods, open_tensorboard
from .timesteps import parse_timestep_selection, selected_steps
from .types import RolloutBatch

__all__ = ["LRPOTrainer", "NonFiniteError", "RolloutBatch", "RESUMABLE_KEYS"]


DIAG_GROUPS = 4  # groups whose reward is scored again after a 1-pixel shift (diagnostics)
UPDATE_STATS = ("ppo_loss", "approx_kl", "clip_fraction", "reg", "gt_log_density", "kl_ref", "grad_norm")
# of the first optimiser step of an epoch, where nothing has changed yet: the ratio must be 1
FIRST_STEP_STATS = ("first_clip_fraction", "first_max_abs_log_ratio")


@dataclass
class EpochTimes:
    rollout: float = 0.0
    reward: float = 0.0
    update: float = 0.0


class NonFiniteError(FloatingPointError):
    pass


class _Abandoned(Exception):
    """Raised inside an epoch's rollouts when a stop was requested: nothing of the epoch is kept."""


class LRPOTrainer(CheckpointMethods, RunRecordMethods):
    """LRPO of a pretrained policy; the checkpoint methods (save / load / guard rollback) are in
    lrpo.rl.checkpointing, the log, TensorBoard and sample-grid methods in lrpo.rl.records."""

    def __init__(
        self, cfg: LRPOConfig, resume: str | Path | None = None, progress: bool = True, dist_ctx: DistContext | None = None,
        overwrite: bool = False, allow_changes: bool = False,
    ):
        self.cfg = cfg
        self.ctx = dist_ctx or init_from_env()
        self.allow_changes = allow_changes
        clear = self._claim_out_dir(resume, overwrite)
        self.interrupt = GracefulInterrupt("stopping: rollouts in flight are dropped, an update in flight is finished, "
                                           "then the last completed epoch is checkpointed; Ctrl-C again stops at once")
        self.saved_epoch: int | None = None  # epoch of the newest step_* checkpoint of this run
        self.resumed_from: int | None = None
        self.pending_records: list[dict] = []
        self.progress = progress and self.ctx.is_main
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", self.ctx.local_rank)
        self.out_dir = Path(cfg.out_dir)

        torch.manual_seed(cfg.seed)
        val = self._load_faces_and_reward()
        self._load_policy()
        self._build_samplers()
        if cfg.data.resolution != self.policy.cfg.resolution:
            raise ValueError(
                f"data.resolution={cfg.data.resolution} but the policy in {self.init_ckpt} works at {self.policy.cfg.resolution}"
            )
        self.val_hq = torch.stack([val[i] for i in range(len(val))]) if val is not None and len(val) else None
        self.group_sampler = GroupSampler(
            len(self.train_set), cfg.group_size, cfg.groups_per_epoch, cfg.seed, rank=self.ctx.rank, world_size=self.ctx.world_size
        )
        self.guard = GuardMetrics(cfg.guard.metrics, self.device) if cfg.guard.every else None
        self.guard_baseline: dict[str, float] | None = None
        self.best: tuple[int, float] | None = None  # (epoch, held-out reward) of the best guarded epoch
        self.epoch = 0
        self.history: list[dict] = []
        self.diag: dict[str, float] = {}
        self._tb = None
        self._recorded_tb: set[str] = set()
        if clear:
            clear_run_dir(self.out_dir)
        if resume:
            self.load(resume)

    def _claim_out_dir(self, resume: str | Path | None, overwrite: bool) -> bool:
        """Refuse a resume that would change the run, or an out_dir holding another run, before anything
        loads; True when this process must clear out_dir once the data, rewards and policy are good."""
        if resume:
            found = ckpt_io.find_checkpoint(resume)  # a folder without a checkpoint fails before anything loads
            self._resume_changes(found)  # a resume that would change the run stops before anything is read
            # resuming another folder's checkpoint into out_dir starts a new run folder there: it must
            # not hold a third run (whose log and old checkpoints the resume would overwrite)
            forked = found.parent.resolve() != Path(self.cfg.out_dir).resolve()
        else:
            forked = True
        # every rank may refuse; only rank 0 clears, once the data, rewards and policy below are good
        # resuming in place: claim_run_dir only refuses links where the run writes
        return claim_run_dir(self.cfg.out_dir, resume=not forked, overwrite=overwrite) and forked and self.ctx.is_main

    def _load_faces_and_reward(self) -> FaceImageSet | None:
        """The training faces, the composite reward and every caption; returns the held-out faces."""
        cfg = self.cfg
        faces = FaceImageSet(cfg.data.hq, resolution=cfg.data.resolution, skip_bad=cfg.data.skip_bad)
        self.train_set, val = faces.split(cfg.data.val_count) if cfg.data.val_count else (faces, None)
        reward_device = str(self.device) if cfg.reward.device == "auto" else cfg.reward.device
        spec: Any = dict(cfg.reward.terms) if cfg.reward.terms else cfg.reward.preset
        self.reward = build_composite(spec, device=reward_device)
        # every caption is found (or reported missing) here, before the policy loads and long
        # before the first rollout
        captions = Captions.from_sources(cfg.data.captions, cfg.data.default_caption)
        self.train_captions = self._captions_of(self.train_set, captions)
        self.val_names = val.names if val is not None else []
        self.val_captions = self._captions_of(val, captions) if val is not None else []
        return val

    def _load_policy(self) -> None:
        """The policy (trainable parts only), its engine, the KL reference, the optimiser and the EMA."""
        cfg = self.cfg
        self.policy, self.diffusion_cfg, self.init_ckpt = load_policy(cfg.init_checkpoint, self.device, ema=cfg.init_ema,
                                                                        trust_pickle=cfg.trust_pickle)
        self.policy.eval()  # for rollouts and updates alike (module docstring)
        trainable = {id(p) for p in self.policy.trainable_parameters() if p.requires_grad}
        for p in self.policy.parameters():  # frozen parts (stage 1) never receive gradients
            p.requires_grad_(id(p) in trainable)
        # several processes: DDP or FSDP (which replaces the parameters by shards): the optimiser
        # and the EMA are built on what the engine leaves
        self.engine = make_engine(cfg.engine, self.ctx, self.policy)
        self.params = self.engine.params()
        self.ref_policy = None
        if cfg.kl_beta > 0:
            self.ref_policy, _, _ = load_policy(cfg.init_checkpoint, self.device, ema=cfg.init_ema, trust_pickle=cfg.trust_pickle)
            self.ref_policy.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.policy, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def _build_samplers(self) -> None:
        """The rollout and evaluation samplers, the precision, the trained steps and their weights."""
        cfg = self.cfg
        alphas = make_alphas_cumprod(self.diffusion_cfg)
        self.sampler = DDIMSampler(alphas, cfg.sample_steps, cfg.eta)
        self.eval_sampler = DDIMSampler(alphas, cfg.sample_steps, cfg.eval_eta)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.sample_forward, self.compile_note = self._sampling_forward()
        # log pi_old from the update's own forwards where the rollout's may round otherwise: a compiled
        # graph fuses differently, and in fp32 a kernel chosen for the rollout's batch size can give a
        # row another last bit than the one chosen for a minibatch (bf16 outputs round that away). Not
        # under distributed FSDP (compile is off there too): its forward is a collective, and a process
        # whose minibatch is empty would skip it here
        fsdp = cfg.engine == "fsdp" and self.ctx.enabled
        self.recompute_old = self.sample_forward is not None or (self.precision == "fp32" and not fsdp)
        self.n_train = num_train_steps(cfg.sample_steps, cfg.train_fraction)
        # steps branch_step .. n_train-1 may be trained (before branch_step a group shares one deterministic path)
        branched = self.n_train - cfg.branch_step
        self.timestep_selection = parse_timestep_selection(cfg.train_timesteps, branched, reg_last_k=cfg.reg_last_k)
        # steps one update trains per trajectory (all of them, or those train_timesteps picks)
        self.n_slots = self.timestep_selection.width or branched
        k = min(cfg.reg_last_k, self.n_train)
        # the last K trained steps carry the GT-guided likelihood term (SPEC: t = 101 ... 21)
        self.reg_steps = list(range(self.n_train - k, self.n_train)) if cfg.reg_weight > 0 else []
        sig = self.sampler.sigmas.float()
        weights = noise_level_weights(sig) if cfg.noise_level_weights else torch.ones_like(sig)
        self.step_weights = weights

    def _captions_of(self, faces: FaceImageSet, captions: Captions) -> list[str | None]:
        if not self.reward.caption_terms:
            return captions.for_images(faces.paths)
        terms = ", ".join(repr(t) for t in self.reward.caption_terms)
        return list(require_captions(faces.paths, captions, f"reward term {terms}", what=f"images of {faces.source}"))

    # ------------------------------------------------------------------------------------------
    # 1. collect
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, epoch: int) -> RolloutBatch:
        cfg = self.cfg
        G = cfg.group_size
        groups = self.group_sampler.groups(epoch)
        parts: list[dict] = []
        bar = tqdm(total=len(groups) * G, desc=f"epoch {epoch + 1}/{cfg.epochs} rollout", unit="traj", disable=not self.progress, leave=False)
        for start in range(0, len(groups), cfg.rollout_groups_per_batch):
            if self.stop_requested():
                bar.close()
                raise _Abandoned
            chunk: list[Group] = groups[start : start + cfg.rollout_groups_per_batch]
            hq = torch.cat([self.train_set[g.index][None].expand(G, -1, -1, -1) for g in chunk])
            lq = torch.cat([make_group_lq(self.train_set[g.index], g, G, self._degrade_fn) for g in chunk])
            seeds = [derive_seed(g.seed, member) for g in chunk for member in range(G)]
            hq, lq = hq.to(self.device), lq.to(self.device)
            cond = self.policy.condition(lq)
            traj = sample_trajectories(self.policy, self.sampler, cond, sample_generators(seeds), record=True,
                                       precision=self.precision, forward=self.sample_forward, group_size=G,
                                       branch_step=cfg.branch_step)
            parts.append(
                dict(
                    group_ids=torch.tensor([g.group_id for g in chunk for _ in range(G)]),
                    seeds=seeds,
                    names=[self.train_set.names[g.index] for g in chunk for _ in range(G)],
                    captions=[self.train_captions[g.index] for g in chunk for _ in range(G)],
                    cond=cond,
                    gt_x0=self.policy.encode(hq, cond),
                    hq=hq,
                    lq=lq,
                    latents=traj.latents,
                    log_probs=traj.log_probs,
                    images=self.policy.decode(traj.sample, cond),
                )
            )
            bar.update(len(chunk) * G)
        bar.close()
        return RolloutBatch(
            **{
                k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list) else torch.cat([p[k] for p in parts]))
                for k in RolloutBatch._fields
            }
        )

    def _degrade_fn(self, hq: Tensor, generator: torch.Generator):
        return degrade(hq, self.cfg.degradation, generator)

    # ------------------------------------------------------------------------------------------
    # 2. score
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: RolloutBatch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        meta = _meta(batch.names, batch.captions or [None] * len(batch.names))
        out = self.reward(RewardInput(images=batch.images, gt=batch.hq, lq=batch.lq, meta=meta))
        bad = [name for name, values in {"total": out.scores, **out.details}.items() if not torch.isfinite(values).all()]
        self._agree_finite(not bad, f"reward term {bad[0]!r}" if bad else "", epoch)
        if self.cfg.diagnostics:
            # the first DIAG_GROUPS groups only: a second reward pass over a whole 512 px epoch would cost as much as the first
            ids = batch.group_ids.tolist()
            first = set(list(dict.fromkeys(ids))[:DIAG_GROUPS])
            rows = [i for i, g in enumerate(ids) if g in first]
            sub = torch.tensor(rows)
            shifted = self.reward(RewardInput(images=shift_one_pixel(batch.images[sub]), gt=batch.hq[sub], lq=batch.lq[sub],
                                              meta=[meta[i] for i in rows])).scores
            self.diag.update(group_signal_to_noise(out.scores.float().cpu()[sub], shifted.float().cpu(), batch.group_ids[sub]))
        return out.scores.float().cpu(), {k: v.float().cpu() for k, v in out.details.items()}

    # ------------------------------------------------------------------------------------------
    # 3. advantages
    # ------------------------------------------------------------------------------------------
    def advantages(self, rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        cfg = self.cfg
        all_rewards = all_gather_cat(self.ctx, rewards.to(self.device)).cpu().double()
        std = float(all_rewards.std(correction=0)) if cfg.global_std else None
        res = group_advantages(rewards, group_ids, global_std=cfg.global_std, eps=cfg.adv_eps, std_override=std)
        per_step = step_advantages(res.advantages, self.step_weights, clip=cfg.adv_clip)
        dropped = int(all_reduce_sum(self.ctx, torch.tensor(float(res.num_dropped_groups), device=self.device)).item())
        stats = {"adv_std_of_rewards": res.std, "dropped_groups": dropped, "adv_abs_mean": float(res.advantages.abs().mean())}
        return per_step, res.keep, stats

    # ------------------------------------------------------------------------------------------
    # 4. update
    # ------------------------------------------------------------------------------------------
    def gt_targets(self, batch: RolloutBatch) -> Tensor | None:
        """g_{t_prev} for the regularised steps: [len(reg_steps), N, ...] (per-trajectory noise)."""
        if not self.reg_steps:
            return None
        levels = self.sampler.alpha_prev[self.reg_steps]
        shape = tuple(batch.gt_x0.shape[1:])
        if self.cfg.gt_path == "marginal":
            rows, chain = len(self.reg_steps), None
        else:  # the reference chains through the levels of every sampler timestep, least noisy first
            chain = self.sampler.alpha_t.flip(0)
            rows = len(chain)
        gens = sample_generators([derive_seed(s, 0x67) for s in batch.seeds])
        noise = torch.stack([torch.randn((rows, *shape), generator=g) for g in gens], dim=1).to(self.device)
        return gt_path(batch.gt_x0.float(), levels, mode=self.cfg.gt_path, noise=noise, chain_alphas_cumprod=chain)

    def step_loss(
        self, batch: RolloutBatch, idx: Tensor, steps: Tensor, adv: Tensor, gt: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of trajectories ``idx`` at step indices ``steps`` (both [M], any mix of steps).

        Returns the loss (with grad) and floats: ppo_loss, approx_kl, clip_fraction,
        max_abs_log_ratio; reg and gt_log_density when a step of ``steps`` is regularised (means over
        those samples); kl_ref when kl_beta > 0.
        """
        terms, stats = self.step_terms(batch, idx, steps, adv, gt)
        return sum(terms.values()), stats

    def step_terms(
        self, batch: RolloutBatch, idx: Tensor, steps: Tensor, adv: Tensor, gt: Tensor | None, module=None
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The loss's weighted terms: "pg" (pg_weight x PPO), "reg" (lambda x GT-guided, when a step
        is regularised) and "kl" (kl_beta x KL); ``module`` replaces the engine's forward."""
        cfg = self.cfg
        x_t = batch.latents[idx, steps]
        x_prev = batch.latents[idx, steps + 1]
        t = self.sampler.timesteps.to(self.device)[steps]
        cond = batch.cond[idx]
        with autocast_context(self.device, self.precision):
            out = (module or self.engine.module)(x_t, t, cond)  # (through DDP's wrapper: its gradient hooks)
        st = self.sampler.step(out.float(), x_t, steps, prediction=self.policy.prediction, prev_sample=x_prev)
        ppo = ppo_clip_loss(st.log_prob, batch.log_probs[idx, steps], adv[idx, steps].to(st.log_prob.dtype), cfg.clip_range)
        terms = {"pg": cfg.pg_weight * ppo.loss}
        stats = {
            "ppo_loss": ppo.loss.item(), "approx_kl": ppo.approx_kl.item(), "clip_fraction": ppo.clip_fraction.item(),
            "max_abs_log_ratio": ppo.max_abs_log_ratio.item(),
        }
        if gt is not None:
            row_of = {j: r for r, j in enumerate(self.reg_steps)}
            mask = torch.tensor([int(j) in row_of for j in steps.tolist()], device=self.device)
            if mask.any():
                rows = torch.tensor([row_of[int(j)] for j in steps[mask].tolist()], device=self.device)
                g = gt[rows, idx[mask]]
                m = gaussian_log_prob(g, st.mean[mask], st.std[mask])
                reg = gt_likelihood_regularizer(m, cfg.reg_tau)
                terms["reg"] = cfg.reg_weight * reg * mask.float().mean()
                stats["reg"] = reg.item()
                stats["gt_log_density"] = m.mean().item()
        if self.ref_policy is not None:
            with torch.no_grad(), autocast_context(self.device, self.precision):
                ref_out = self.ref_policy(x_t, t, cond)
            ref_mean = self.sampler.step(ref_out.float(), x_t, steps, prediction=self.policy.prediction, prev_sample=x_prev).mean
            kl = kl_to_reference(st.mean, ref_mean, st.std).mean()
            terms["kl"] = cfg.kl_beta * kl
            stats["kl_ref"] = kl.item()
        return terms, stats

    def update_diagnostics(self, batch: RolloutBatch, idx: Tensor, chosen: Tensor | None, adv: Tensor, gt: Tensor | None) -> dict[str, float]:
        """Gradient norms of the PG and lambda x GT terms on minibatch ``idx`` (one forward, two
        gradients; nothing accumulates into .grad) and their cosine (lrpo.rl.diagnostics). Steps:
        evenly spaced slots, the last included (the regularised end), at most max(2, timesteps per
        forward) of them, so the forward stays the size of an update's."""
        if not self.cfg.diagnostics or self.engine.kind == "fsdp" and self.ctx.enabled or len(idx) == 0:
            return {}
        k = min(self.n_slots, max(2, self.cfg.timesteps_per_forward))
        slots = sorted({round(i * (self.n_slots - 1) / max(k - 1, 1)) for i in range(k)})
        steps = self._steps_of(idx, slots, chosen)
        # the module itself, not DDP's wrapper: DDP's hooks expect a backward, not autograd.grad
        terms, _ = self.step_terms(batch, idx.repeat(len(slots)), steps.reshape(-1), adv, gt, module=self.policy)
        params = [p for p in self.policy.parameters() if p.requires_grad]

        def grads(term: Tensor | None) -> list[Tensor | None]:
            if term is None or not term.requires_grad:
                return [None] * len(params)
            return list(torch.autograd.grad(term, params, retain_graph=True, allow_unused=True))

        return gradient_balance(grads(terms.get("pg")), grads(terms.get("reg")))

    def optimizer_step(self) -> float:
        """Clip and step; the gradients are already summed over processes (by the engine's backward)."""
        norm = self.engine.clip_grad_norm(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.policy)
        return norm

    def update(self, batch: RolloutBatch, adv: Tensor, keep: Tensor, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        gt = self.gt_targets(batch)
        adv = adv.to(self.device)
        kept = keep.nonzero().flatten()
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, self.ctx.rank, 0x75))
        means = _Means()
        first: dict[str, float] | None = None
        # every process must run the same number of optimiser steps (gradients are summed over
        # processes): a process whose groups were dropped runs empty minibatches (zero gradient),
        # and each process scales its loss by its share of the step's samples over all processes,
        # so every sample weighs the same however the kept samples are spread
        n_mb = all_reduce_max(self.ctx, math.ceil(len(kept) / cfg.minibatch_size))
        total_steps = cfg.inner_epochs * n_mb * (self.n_slots if cfg.update_mode == "per_timestep" else 1)
        # [N, width] steps per trajectory (train_timesteps), or None: every trajectory trains every step
        chosen = self.chosen_steps(epoch, batch.seeds)
        plan = self.update_plan(kept, n_mb, chosen, gen)
        if self.recompute_old:  # log pi_old in the update's own forwards: the first ratio of an epoch is exactly 1
            batch = self.recompute_log_probs(batch, plan[0])
        bar = tqdm(total=total_steps, desc=f"epoch {epoch + 1}/{cfg.epochs} update", unit="opt", disable=not self.progress, leave=False)
        first_done = False
        for minibatches in plan:
            for idx, step_groups in minibatches:
                if not first_done:
                    self.diag.update(self.update_diagnostics(batch, idx, chosen, adv, gt))
                    first_done = True
                share = self._sample_share(len(idx))
                if cfg.update_mode == "per_timestep":
                    for steps in step_groups:
                        stats = self._backward(batch, idx, steps, adv, gt, scale=share, epoch=epoch)
                        first = first if first is not None or not stats else dict(stats)
                        stats["grad_norm"] = self.optimizer_step()
                        means.add(stats)
                        bar.update(1)
                else:
                    merged = _Means()
                    for c, steps in enumerate(step_groups):
                        # only the last backward of the step communicates (DDP no_sync)
                        sync = contextlib.nullcontext() if c == len(step_groups) - 1 else self.engine.accumulating()
                        with sync:
                            merged.add(self._backward(batch, idx, steps, adv, gt, scale=share * len(steps) / self.n_slots, epoch=epoch))
                    stats = merged.result()
                    first = first if first is not None or not stats else dict(stats)
                    stats["grad_norm"] = self.optimizer_step()
                    means.add(stats)
                    bar.update(1)
        bar.close()
        out = means.result()
        if first is not None:
            out["first_clip_fraction"] = first["clip_fraction"]
            out["first_max_abs_log_ratio"] = first["max_abs_log_ratio"]
        return out

    def update_plan(self, kept: Tensor, n_mb: int, chosen: Tensor | None, gen: torch.Generator) -> list[list[tuple[Tensor, list[Tensor]]]]:
        """The update's forwards, per inner epoch (each in a fresh order of the ``kept`` trajectories):
        ``n_mb`` minibatches, each (trajectory indices, the [S, M] step tensors of its backwards): one
        step slot per backward (per_timestep) or ``timesteps_per_forward`` of them (accumulate)."""
        cfg = self.cfg
        width = 1 if cfg.update_mode == "per_timestep" else cfg.timesteps_per_forward
        slot_groups = [list(range(s, min(s + width, self.n_slots))) for s in range(0, self.n_slots, width)]
        plan = []
        for _ in range(cfg.inner_epochs):
            order = kept[torch.randperm(len(kept), generator=gen).to(kept.device)] if len(kept) else kept
            idxs = [order[b * cfg.minibatch_size : (b + 1) * cfg.minibatch_size].to(self.device) for b in range(n_mb)]
            plan.append([(idx, [self._steps_of(idx, slots, chosen) for slots in slot_groups]) for idx in idxs])
        return plan

    @torch.no_grad()
    def recompute_log_probs(self, batch: RolloutBatch, minibatches: list[tuple[Tensor, list[Tensor]]]) -> RolloutBatch:
        """``batch`` with log pi_old of the steps this epoch trains recomputed by the update's own
        forwards: the same rows in the same batches (``minibatches``, the first inner epoch of
        :meth:`update_plan`), with the weights before the epoch's first optimiser step. A compiled
        rollout rounds differently from the eager update (other fused kernels), and a kernel may round
        a row differently at another batch size, so only the update's own batches give a first ratio
        of exactly 1."""
        log_probs = batch.log_probs.clone()
        timesteps = self.sampler.timesteps.to(self.device)
        for idx, step_groups in minibatches:
            for steps in step_groups if len(idx) else []:
                i, j = idx.repeat(len(steps)), steps.reshape(-1)  # as _backward lays out its rows
                x_t = batch.latents[i, j]
                with autocast_context(self.device, self.precision):
                    out = self.policy(x_t, timesteps[j], batch.cond[i])
                st = self.sampler.step(out.float(), x_t, j, prediction=self.policy.prediction, prev_sample=batch.latents[i, j + 1])
                log_probs[i, j] = st.log_prob.to(log_probs.dtype)
        return batch._replace(log_probs=log_probs)

    def _sampling_forward(self) -> tuple[CompiledForward | None, str]:
        """The compiled rollout/evaluation forward when ``compile`` says so (lrpo.policies.compiled)."""
        cfg = self.cfg
        batch = cfg.rollout_groups_per_batch * cfg.group_size
        local_groups = math.ceil(cfg.groups_per_epoch / self.ctx.world_size)
        # (with shared prefixes only the branched steps run the compiled, whole-batch forward)
        forwards = cfg.epochs * math.ceil(local_groups / cfg.rollout_groups_per_batch) * (cfg.sample_steps - cfg.branch_step)
        if cfg.engine == "fsdp" and self.ctx.enabled and cfg.compile != "off":
            # the recomputation of log pi_old runs per process, and FSDP's forward is a collective
            return None, "compile: off (not with engine=fsdp)"
        on, note = compile_decision(cfg.compile, forwards, self.device)
        return (CompiledForward(self.policy, batch) if on else None), note

    def chosen_steps(self, epoch: int, seeds: list[int]) -> Tensor | None:
        """[N, n_slots] the steps each trajectory trains this epoch (train_timesteps, counted from
        branch_step), or None when every trajectory trains every step from 0."""
        first = self.cfg.branch_step
        chosen = selected_steps(self.timestep_selection, self.n_train - first, epoch, seeds)
        if chosen is None and first:
            chosen = torch.arange(self.n_train - first).expand(len(seeds), -1)
        return None if chosen is None else (chosen + first).to(self.device)

    def _steps_of(self, idx: Tensor, slots: list[int], chosen: Tensor | None) -> Tensor:
        """[len(slots), len(idx)] step indices: slot s of each trajectory (the step itself for ``all``)."""
        if chosen is None:
            return torch.tensor(slots, device=self.device)[:, None].expand(-1, len(idx))
        return chosen[idx][:, slots].t()

    def _sample_share(self, local: int) -> float:
        """This process's fraction of the samples all processes hold in the current minibatch."""
        if not self.ctx.enabled:
            return 1.0
        total = int(all_reduce_sum(self.ctx, torch.tensor(float(local), dtype=torch.float64, device=self.device)).item())
        return local / total if total else 0.0

    def _backward(
        self, batch: RolloutBatch, idx: Tensor, steps: Tensor, adv: Tensor, gt: Tensor | None, scale: float, epoch: int
    ) -> dict[str, float]:
        """One backward of trajectories ``idx`` at ``steps`` [S, len(idx)] (row s: each one's step)."""
        if len(idx) == 0:
            # no samples here: take part in the finite-check agreement, and under DDP / FSDP in their
            # collectives too, with a zero-scaled forward and backward of one trajectory, in the order
            # the other processes make them (forward, agreement, backward)
            if not self.engine.every_process_computes:
                self._agree_finite(True, "update", epoch)
                return {}
            first = torch.zeros(len(steps), dtype=torch.long, device=self.device)
            loss, _ = self.step_loss(batch, first, torch.zeros_like(first), adv, gt)
            self._agree_finite(bool(torch.isfinite(loss)), "the zero-weighted update of a process without samples", epoch)
            (loss * 0.0).backward()
            return {}
        sample_idx = idx.repeat(len(steps))
        step_idx = steps.reshape(-1)
        loss, stats = self.step_loss(batch, sample_idx, step_idx, adv, gt)
        bad = [k for k, v in stats.items() if not math.isfinite(v)] or ["loss"]
        where = sorted(set(step_idx.tolist()))
        self._agree_finite(bool(torch.isfinite(loss)), f"update term(s) {', '.join(bad)}", epoch, f" at step(s) {where}")
        (loss * scale).backward()
        return stats

    def _agree_finite(self, finite: bool, what: str, epoch: int, where: str = "") -> None:
        """Every process learns whether any process saw a non-finite value, and all stop together."""
        flag = all_reduce_max(self.ctx, 0 if finite else self.ctx.rank + 1)
        if flag:
            rank = f" on rank {flag - 1}" if self.ctx.enabled else ""
            if finite:  # another process's value: it names the term in its own message
                raise NonFiniteError(f"stopping with rank {flag - 1}: a non-finite value in epoch {epoch}{where}; the last checkpoint is intact")
            raise NonFiniteError(f"{what} not finite in epoch {epoch}{where}{rank}; the last checkpoint is intact")

    # ------------------------------------------------------------------------------------------
    # evaluation on held-out faces (fixed degradation, fixed seeds)
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, preset: str | None = None, seed: int = 0) -> dict[str, float]:
        """Restore the held-out faces (degraded once with ``seed``, the guard's preset by default)
        deterministically with eval_eta and score them: reward terms, PSNR, SSIM, guard metrics."""
        preset = preset or self.cfg.guard.preset
        if self.val_hq is None:
            return {}
        hq = self.val_hq
        lq, _ = degrade(hq, DEGRADATION_PRESETS[preset], torch.Generator().manual_seed(seed))
        hq, lq = hq.to(self.device), lq.to(self.device)
        ctx = self.ema.applied_to(self.policy) if self.ema is not None else contextlib.nullcontext()
        with ctx:
            cond = self.policy.condition(lq)
            traj = sample_trajectories(self.policy, self.eval_sampler, cond, sample_generators(list(range(len(lq)))), record=False,
                                       precision=self.precision, forward=self.sample_forward)
            images = self.policy.decode(traj.sample, cond)
        out = self.reward(RewardInput(images=images, gt=hq, lq=lq, meta=_meta(self.val_names, self.val_captions)))
        res = {"eval_reward": float(out.scores.mean()), "eval_psnr": float(psnr(images, hq).mean()), "eval_ssim": float(ssim(images, hq).mean())}
        res.update({f"eval_{k}": float(v.mean()) for k, v in out.details.items() if "/" not in k and k != "total"})
        if self.guard is not None:
            res.update({f"guard_{k}": v for k, v in self.guard(images, hq).items()})
        # rank 0's figures on every process: guard and "best" decisions (a collective save under
        # FSDP) must not differ in the last bits between processes
        return broadcast_floats(self.ctx, res)

    # ------------------------------------------------------------------------------------------
    # one epoch, checkpoints, the loop
    # ------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        times = EpochTimes()
        self.diag: dict[str, float] = {}  # this process's diagnostics of the epoch (lrpo.rl.diagnostics)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        batch = self.collect(epoch)
        times.rollout = time.perf_counter() - t0
        if self.cfg.log_images_every and epoch % self.cfg.log_images_every == 0 and self.ctx.is_main:
            self.save_sample_grid(batch, epoch)
        if self.stop_requested():
            raise _Abandoned
        t0 = time.perf_counter()
        rewards, details = self.score(batch, epoch)
        times.reward = time.perf_counter() - t0
        adv, keep, adv_stats = self.advantages(rewards, batch.group_ids)
        t0 = time.perf_counter()
        upd = self.update(batch, adv, keep, epoch)
        times.update = time.perf_counter() - t0

        # global statistics of every reward term (all processes)
        rec: dict[str, Any] = {"epoch": epoch}
        for name, values in {"reward": rewards, **{f"reward/{k}": v for k, v in details.items() if k != "total"}}.items():
            allv = all_gather_cat(self.ctx, values.to(self.device)).double()
            rec[f"{name}_mean"] = float(allv.mean())
            rec[f"{name}_std"] = float(allv.std(correction=0))
        rec.update(adv_stats)
        # a fixed key list: every process must take part in the same all-reduces
        for k in UPDATE_STATS:
            if k in ("reg", "gt_log_density") and not self.reg_steps or k == "kl_ref" and self.ref_policy is None:
                continue
            # weighted by each process's kept samples: a process whose groups were all dropped
            # recorded nothing and must not pull the mean towards 0
            w = float(keep.sum()) if k in upd else 0.0
            pair = torch.tensor([upd.get(k, 0.0) * w, w], dtype=torch.float64, device=self.device)
            num, den = all_reduce_sum(self.ctx, pair).tolist() if self.ctx.enabled else (upd.get(k, 0.0), 1.0)
            rec[k] = num / den if den else 0.0
        for k in FIRST_STEP_STATS:  # the worst process: any rank whose ratio is not 1 is a fault
            rec[k] = all_reduce_max(self.ctx, float(upd.get(k, 0.0)))
        n_traj = len(rewards) * self.ctx.world_size
        kept = int(all_reduce_sum(self.ctx, keep.sum().to(self.device)).item())
        rec.update(
            trajectories=n_traj,
            time_rollout_s=round(times.rollout, 2),
            time_reward_s=round(times.reward, 2),
            time_update_s=round(times.update, 2),
            # this process's CPU seconds for the epoch's rollout, reward and update (all its threads;
            # evaluation and checkpoints excluded): the x axis of reward-per-compute comparisons
            time_cpu_s=round(time.process_time() - cpu0, 2),
            update_sample_steps_per_s=round(kept * self.n_slots * self.cfg.inner_epochs / max(times.update, 1e-9), 2),
            rollout_traj_per_s=round(n_traj / max(times.rollout, 1e-9), 3),
            precision=self.precision,
            compiled=self.sample_forward is not None,
        )
        rec.update(self.diag)  # (rank 0's are the ones logged)
        return rec

    def stop_requested(self) -> bool:
        """True on every process once any process got SIGINT/SIGTERM (they all stop together)."""
        return bool(all_reduce_max(self.ctx, int(self.interrupt.requested)))

    def _interrupted(self) -> Interrupted:
        """Checkpoint the last completed epoch (unless saved already) and build the exception."""
        ckpt = self.out_dir / f"step_{self.epoch:06d}"
        missing = self.saved_epoch != self.epoch or (self.ctx.is_main and not ckpt.is_dir())
        if all_reduce_max(self.ctx, int(missing)):  # every process: FSDP gathers the weights for rank 0
            self.save(self.epoch)  # (resumed from `best` or an older step: this epoch has no step_ yet)
        barrier(self.ctx)  # no process exits (and makes the launcher stop the others) before rank 0 has saved
        if self.ctx.is_main:
            self.log({"epoch": self.epoch, "interrupted": self.interrupt.signal_name or "signal"})
        return Interrupted(f"stopped by {self.interrupt.signal_name or 'a signal'} after epoch {self.epoch}; "
                           f"checkpoint {ckpt}; continue with --resume", ckpt)

    def run(self, eval_every: int = 0) -> dict[str, Any]:
        """Train until ``cfg.epochs`` (or the time budget, or a guard stop). Raises
        :class:`~lrpo.runs.Interrupted` after checkpointing when stopped by SIGINT/SIGTERM."""
        cfg = self.cfg
        if self.resumed_from is not None and self.epoch >= cfg.epochs:
            return {"epoch": self.epoch, "last": self.history[-1] if self.history else {}, "complete": True}
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            record_written(self.out_dir, "config.yaml")
        self._tb = open_tensorboard(self.out_dir) if self.ctx.is_main else None
        if self._tb is not None:
            self._record_tb()
        for rec in self.pending_records:
            self.log(rec)
        self.pending_records = []
        with self.interrupt:
            try:
                self._loop(eval_every)
            except _Abandoned:
                raise self._interrupted() from None
            finally:
                if self._tb is not None:
                    self._tb.close()
        return {"epoch": self.epoch, "last": self.history[-1] if self.history else {}, "complete": self.epoch >= cfg.epochs}

    def _loop(self, eval_every: int) -> None:
        cfg = self.cfg
        if self.epoch == 0 and self.resumed_from is None and (eval_every or self.guard is not None):
            first = self.evaluate()
            self.log({"epoch": 0, **first})
            if self.guard is not None:
                self.guard_baseline = {k[len("guard_"):]: v for k, v in first.items() if k.startswith("guard_")}
                # the start is the first accepted state: a rollback before any better epoch returns to it
                self.best = (0, first["eval_reward"])
                self.save(0, name="best")
        # the bar counts completed epochs, as the log's "epoch" field does
        bar = tqdm(total=cfg.epochs, initial=self.epoch, desc="lrpo", unit="epoch", disable=not self.progress, dynamic_ncols=True)
        clock = time.process_time if cfg.time_budget_clock == "cpu" else time.perf_counter
        started = clock()
        try:
            while self.epoch < cfg.epochs:
                over = int(cfg.time_budget_min > 0 and clock() - started > cfg.time_budget_min * 60)
                if all_reduce_max(self.ctx, over):  # every process stops at the same epoch
                    if self.history and self.saved_epoch != self.epoch:
                        self.save(self.epoch)  # the budget ended between checkpoints
                    break
                rng = torch.get_rng_state()
                try:
                    rec = self.train_epoch(self.epoch)
                except _Abandoned:
                    torch.set_rng_state(rng)  # the state the last completed epoch ended with
                    raise
                self.epoch += 1
                rec["epoch"] = self.epoch
                guard_due = self.guard is not None and self.epoch % cfg.guard.every == 0
                if (eval_every and self.epoch % eval_every == 0) or guard_due:
                    rec.update(self.evaluate())
                # the same decision on every process (held-out figures could differ in the last bits)
                stop = bool(all_reduce_max(self.ctx, int(self.check_guard(rec)))) if guard_due else False
                self.log(rec)
                bar.update(1)
                bar.set_postfix(reward=f"{rec['reward_mean']:.4f}", kl=f"{rec.get('approx_kl', 0):.2e}")
                if self.epoch % cfg.ckpt_every == 0 or self.epoch == cfg.epochs or stop:
                    self.save(self.epoch)
                if stop:
                    if cfg.guard.action == "rollback" and self.best is not None:
                        self.rollback_to_best()
                    break
                if self.stop_requested():
                    raise self._interrupted()
        finally:
            bar.close()


class _Means:
    """Running mean of each logged statistic over the calls that recorded it: a term recorded on
    only some steps (the GT term on the last K) is averaged over those steps, not over all."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def _meta(names: list[str], captions: list[str | None]) -> list[dict[str, str]]:
    """RewardInput.meta: the face's name and, where it has one, its caption."""
    return [{"name": n, **({"caption": c} if c else {})} for n, c in zip(names, captions)]


