"""Supervised diffusion training of the base policy on online-degraded faces (``lrpo pretrain``).

Each step: draw a batch of HQ faces (a generator-driven permutation, so the order is part of the
saved state), degrade them online (SPEC section 7), encode HQ into the policy's diffusion space,
noise it to random timesteps and regress the network's prediction target; the stage-1 restorer
learns an L1 regression at the same time. Validation restores held-out faces degraded once with a
fixed seed and reports PSNR/SSIM next to the bicubic and stage-1 baselines.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .. import checkpoint as ckpt_io
from ..config import DEGRADATION_PRESETS, PretrainConfig, load_config, resolve_device, save_config, to_dict
from ..data.datasets import FaceImageSet
from ..degradation import degrade
from ..diffusion.ddim import DDIMSampler
from ..diffusion.schedules import add_noise, make_alphas_cumprod, training_target
from ..ema import EMA
from ..eval.metrics import psnr, ssim
from ..policies.sampling import restore_images
from ..policies.compiled import CompiledForward, compile_decision
from ..precision import autocast_context, resolve_precision
from ..policies.pixel_unet import PixelPolicy, build_policy
from ..runlog import append_record, rewrite_log
from ..runs import GracefulInterrupt, Interrupted, check_resume, claim_run_dir, clear_run_dir, config_changes, record_written

# settings a resume may change (budgets, logging, device, steps to go); anything else needs allow_changes
_cpu_seconds = time.process_time  # the cpu budget clock (a name of its own, so a test can drive it)
RESUMABLE_KEYS = ("steps", "time_budget_min", "time_budget_clock", "device", "out_dir", "log_every", "val_every", "val_steps", "ckpt_every",
                  "keep_last", "data.skip_bad")


def lr_at(step: int, progress: float, base_lr: float, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio * lr``.

    ``progress`` in [0, 1] is how far the run is (by steps, or by time when a time budget binds),
    so a time-limited run still anneals to the floor.
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    p = min(1.0, max(0.0, progress))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def progress_after_warmup(step: int, steps: int, warmup: int, time_fraction: float = 0.0) -> float:
    """How far the run is after warm-up, for the cosine schedule: ``(step - warmup) / (steps -
    warmup)``, with ``step`` replaced by ``time_fraction * steps`` where the time budget's spent
    fraction runs ahead of the steps' fraction of the whole run (``step / steps``). While the steps
    stay ahead, as in a run whose budget is a cap it will not reach, the schedule follows the steps
    alone and does not depend on the machine's speed; continuous where the two meet."""
    return (max(step, time_fraction * steps) - warmup) / max(1, steps - warmup)


@dataclass
class ValidationSet:
    names: list[str]
    hq: torch.Tensor  # [N,3,R,R] in [0,1]
    lq: torch.Tensor  # [N,3,R,R] in [0,1], degraded once with a fixed seed
    bicubic: dict[str, float]  # metrics of the LQ itself (already at the output size)


def make_validation_set(faces: FaceImageSet, preset: str, seed: int) -> ValidationSet:
    hq = torch.stack([faces[i] for i in range(len(faces))])
    gen = torch.Generator().manual_seed(seed)
    lq, _ = degrade(hq, DEGRADATION_PRESETS[preset], gen)
    return ValidationSet(
        names=list(faces.names),
        hq=hq,
        lq=lq,
        bicubic={"psnr": float(psnr(lq, hq).mean()), "ssim": float(ssim(lq, hq).mean())},
    )


class Pretrainer:
    """Owns model, EMA, optimiser, data order and RNG; every piece of it is in the checkpoint."""

    def __init__(
        self, cfg: PretrainConfig, resume: str | Path | None = None, progress: bool = True, overwrite: bool = False,
        allow_changes: bool = False,
    ):
        self.cfg = cfg
        self.allow_changes = allow_changes
        if resume:  # a resume that would change the run stops before anything is read or built
            self._resume_changes(ckpt_io.find_checkpoint(resume))
        # refused before anything is deleted; cleared once the data and the model below are good
        clear = claim_run_dir(cfg.out_dir, resume=bool(resume), overwrite=overwrite)
        self.interrupt = GracefulInterrupt("stopping after the step in flight, with a checkpoint; Ctrl-C again stops at once")
        self.resumed_from: int | None = None
        self.pending_records: list[dict] = []
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.out_dir = Path(cfg.out_dir)
        faces = FaceImageSet(cfg.data.hq, resolution=cfg.data.resolution, skip_bad=cfg.data.skip_bad)
        self.skipped = list(faces.skipped)
        self.train_set, val_faces = faces.split(cfg.data.val_count) if cfg.data.val_count else (faces, None)
        self.train_hq = torch.stack([self.train_set[i] for i in range(len(self.train_set))])
        self.val = make_validation_set(val_faces, cfg.val_degradation, cfg.seed + 1) if val_faces is not None else None

        torch.manual_seed(cfg.seed)  # parameter initialisation only; training draws use self.gen
        # one process at a fixed batch size, so channels-last's batch-size-dependent rounding cannot
        # make two runs disagree; about 1.1x faster steps on the CPU (bench/cpu_speed.py)
        self.policy: PixelPolicy = build_policy(cfg.policy).to(self.device).use_channels_last()
        self.ema = EMA(self.policy, cfg.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        self.alphas_cumprod = make_alphas_cumprod(cfg.diffusion).to(self.device, torch.float32)
        self.val_sampler = DDIMSampler(make_alphas_cumprod(cfg.diffusion), cfg.val_steps, eta=0.0)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.val_forward, self.compile_note = self._validation_forward()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.epoch = 0
        self.perm = torch.randperm(len(self.train_set), generator=self.gen)
        self.pos = 0
        self.elapsed = 0.0  # training seconds, summed over resumed segments
        self.elapsed_cpu = 0.0  # this process's CPU seconds in the training loops, summed likewise
        self.history: list[dict] = []
        if clear:
            clear_run_dir(self.out_dir)
        if resume:
            self.load(resume)

    # -- data ---------------------------------------------------------------------------------
    def next_indices(self) -> torch.Tensor:
        out = []
        need = self.cfg.batch_size
        while need:
            if self.pos >= len(self.perm):
                self.epoch += 1
                self.perm = torch.randperm(len(self.train_set), generator=self.gen)
                self.pos = 0
            take = self.perm[self.pos : self.pos + need]
            self.pos += len(take)
            need -= len(take)
            out.append(take)
        return torch.cat(out)

    def progress_fraction(self) -> float:
        """Fraction of the run done after warm-up: by steps, or by time where a time budget is ahead
        of them (:func:`progress_after_warmup`)."""
        cfg = self.cfg
        budget_s = cfg.time_budget_min * 60
        spent = self.elapsed_cpu if cfg.time_budget_clock == "cpu" else self.elapsed  # on the budget's own clock
        return progress_after_warmup(self.step, cfg.steps, cfg.optim.warmup_steps, spent / budget_s if budget_s > 0 else 0.0)

    # -- one optimiser step ---------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        hq = self.train_hq[self.next_indices()]
        lq, _ = degrade(hq, cfg.degradation, self.gen)
        t = torch.randint(0, cfg.diffusion.train_timesteps, (hq.shape[0],), generator=self.gen)
        noise = torch.randn(hq.shape, generator=self.gen)
        hq, lq, t, noise = (x.to(self.device) for x in (hq, lq, t, noise))

        lr = lr_at(self.step, self.progress_fraction(), cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.lr_schedule, cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.policy.train()
        with autocast_context(self.device, self.precision):
            cond = self.policy.condition(lq)
            x0 = self.policy.encode(hq, cond)
            a_t = self.alphas_cumprod[t]
            x_t = add_noise(x0, noise, a_t)
            target = training_target(x0, noise, a_t, self.policy.prediction)
            out = self.policy(x_t, t, cond)
            diffusion_loss = F.mse_loss(out.float(), target.float())
            stage1_loss = torch.zeros((), device=self.device)
            if self.policy.stage1 is not None:
                stage1_loss = F.l1_loss(self.policy.stage1_restore(lq).float(), hq * 2 - 1)
            loss = diffusion_loss + cfg.stage1_loss_weight * stage1_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; last checkpoint is intact")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.optim.grad_clip)
            if cfg.optim.grad_clip > 0
            else torch.zeros(())
        )
        self.optimizer.step()
        self.ema.update(self.policy)
        self.step += 1
        return {
            "loss": loss.item(),
            "diffusion_loss": diffusion_loss.item(),
            "stage1_loss": stage1_loss.item(),
            "grad_norm": float(grad_norm),
            "lr": lr,
        }

    # -- validation ------------------------------------------------------------------------------
    def _validation_forward(self) -> tuple[CompiledForward | None, str]:
        """The compiled sampling forward of the validations, when ``compile`` says so."""
        cfg = self.cfg
        if self.val is None:
            return None, "compile: off (no validation set)"
        passes = 1 + (cfg.steps // cfg.val_every if cfg.val_every else 0)
        on, note = compile_decision(cfg.compile, passes * cfg.val_steps, self.device)
        return (CompiledForward(self.policy, len(self.val.lq)) if on else None), note

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        self.policy.eval()
        with self.ema.applied_to(self.policy):
            lq = self.val.lq.to(self.device)
            out = restore_images(self.policy, self.val_sampler, lq, seeds=list(range(len(lq))), precision=self.precision,
                                 forward=self.val_forward)
            stage1 = ((self.policy.stage1_restore(lq) + 1) / 2).clamp(0, 1)
        hq = self.val.hq.to(self.device)
        return {
            "val_psnr": float(psnr(out, hq).mean()),
            "val_ssim": float(ssim(out, hq).mean()),
            "val_stage1_psnr": float(psnr(stage1, hq).mean()),
            "val_stage1_ssim": float(ssim(stage1, hq).mean()),
            "val_bicubic_psnr": self.val.bicubic["psnr"],
            "val_bicubic_ssim": self.val.bicubic["ssim"],
        }

    # -- checkpoints -------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm,
            "elapsed": self.elapsed,
            "elapsed_cpu": self.elapsed_cpu,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "history": self.history,
        }

    def save(self, name: str | None = None) -> Path:
        return ckpt_io.save_checkpoint(
            self.out_dir,
            self.step,
            self.policy,
            to_dict(self.cfg),
            self.training_state(),
            ema=self.ema.state_dict(),
            kind="pretrain",
            keep_last=self.cfg.keep_last,
            name=name,
        )

    def _resume_changes(self, ckpt: Path) -> dict[str, list] | None:
        """Refuse (unless allowed) a resume from ``ckpt`` that changes the run, from its config.yaml
        alone; returns the log record of allowed changes."""
        saved = ckpt_io.load_config_dict(ckpt)
        changes = config_changes(saved if isinstance(saved, dict) else {}, to_dict(self.cfg), RESUMABLE_KEYS,
                                 defaults=to_dict(PretrainConfig()), paths=("data.hq",))
        return check_resume(ckpt, changes, self.allow_changes)

    def load(self, path: str | Path) -> None:
        ckpt = ckpt_io.find_checkpoint(path)
        allowed = self._resume_changes(ckpt)
        if allowed:
            self.pending_records.append({"step": None, "config_changes": allowed})
        state = ckpt_io.load_state(ckpt)  # data only (weights_only): refused before any weight is touched
        ckpt_io.require_state_fields(state, ckpt, {"step": int, "epoch": int, "generator": torch.Tensor,
                                                   "torch_rng": torch.Tensor, "optimizer": dict})
        ckpt_io.require_optional_state(state, ckpt, ("history",))
        ckpt_io.load_weights(self.policy, ckpt)
        self.ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.perm, self.pos = self._resume_order(ckpt, state.get("perm"), state.get("pos"), changed=bool(allowed))
        self.elapsed = state.get("elapsed", 0.0)
        self.elapsed_cpu = state.get("elapsed_cpu", 0.0)  # absent from checkpoints before it was kept
        self.history = state.get("history") or []
        self.resumed_from = self.step
        for rec in self.pending_records:
            rec["step"] = self.step
        rewrite_log(self.out_dir / "log.jsonl", self.history)

    def _resume_order(self, ckpt: Path, perm: Any, pos: Any, changed: bool) -> tuple[torch.Tensor, int]:
        """The data order a resume continues: ``state.pt``'s permutation, which must be one of this
        run's training faces (state.pt is data from a folder that may come from anyone). After an
        allowed change of the data (--allow-changes) it may not be: the next batch then starts a
        fresh epoch's permutation."""
        n = len(self.train_set)
        fits = (isinstance(perm, torch.Tensor) and perm.dim() == 1 and len(perm) == n and not perm.is_floating_point()
                and torch.equal(perm.sort().values, torch.arange(n)) and isinstance(pos, int) and 0 <= pos <= n)
        if fits:
            return perm, pos
        if changed:
            return torch.empty(0, dtype=torch.long), 0  # next_indices draws the next permutation at once
        raise ckpt_io.CorruptCheckpointError(
            f"{ckpt / 'state.pt'}: its data order (perm, pos) is not a permutation of this run's {n} training faces; "
            f"the state was not resumed. {ckpt_io._earlier_offer(ckpt)}", ckpt)

    # -- the loop ----------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        self.history.append(record)
        append_record(self.out_dir / "log.jsonl", record)

    def run(self) -> dict[str, float]:
        """Train to ``cfg.steps`` (or the time budget). On SIGINT/SIGTERM the step in flight finishes,
        a checkpoint is written and :class:`~lrpo.runs.Interrupted` is raised."""
        cfg = self.cfg
        if self.resumed_from is not None and self.step >= cfg.steps:
            return {"step": self.step, "checkpoint": str(ckpt_io.find_checkpoint(self.out_dir)), "complete": True, "nothing_to_do": True}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        record_written(self.out_dir, "config.yaml")
        for rec in self.pending_records:
            self.log(rec)
        self.pending_records = []
        with self.interrupt:
            return self._loop()

    def _loop(self) -> dict[str, float]:
        cfg = self.cfg
        # the budget counts this invocation, as lrpo train's does: `--resume RUN time_budget_min=12`
        # trains 12 more minutes (the LR schedule still reads the whole run's time)
        budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min > 0 else math.inf
        started, cpu_started, cpu0 = self.elapsed, self.elapsed_cpu, _cpu_seconds()

        def spent() -> float:  # one read of the CPU clock per check, which also keeps elapsed_cpu
            self.elapsed_cpu = cpu_started + _cpu_seconds() - cpu0
            return self.elapsed_cpu - cpu_started if cfg.time_budget_clock == "cpu" else self.elapsed - started
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", unit="step", disable=not self.progress, dynamic_ncols=True)
        last_val: dict[str, float] = {}
        last_val_step = -1
        window: list[dict] = []
        tick = time.perf_counter()
        while self.step < cfg.steps and spent() < budget_s:
            stats = self.train_step()
            now = time.perf_counter()
            self.elapsed += now - tick
            tick = now
            window.append(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", s1=f"{stats['stage1_loss']:.4f}", it_s=f"{self.step / max(self.elapsed, 1e-9):.2f}")
            if self.step % cfg.log_every == 0:
                rec = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                rec.update(step=self.step, epoch=self.epoch, elapsed_s=round(self.elapsed, 1))
                self.log(rec)
                window = []
            if cfg.val_every and self.step % cfg.val_every == 0:
                last_val, last_val_step = self.validate(), self.step
                self.log({"step": self.step, **last_val})
                bar.write(_format_val(self.step, last_val))
                tick = time.perf_counter()  # validation time is not training time
            if self.step % cfg.ckpt_every == 0:
                self.save()
                tick = time.perf_counter()
            if self.interrupt.requested:
                bar.close()
                if window:  # the partial logging window, so the log covers every step
                    rec = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    self.log({**rec, "step": self.step, "epoch": self.epoch, "elapsed_s": round(self.elapsed, 1)})
                ckpt = ckpt_io.find_checkpoint(self.out_dir) if self.step % cfg.ckpt_every == 0 else self.save()
                self.log({"step": self.step, "interrupted": self.interrupt.signal_name})
                raise Interrupted(f"stopped by {self.interrupt.signal_name} at step {self.step}; checkpoint {ckpt}; "
                                  f"continue with --resume", ckpt)
        bar.close()
        if last_val_step != self.step:
            last_val = self.validate()
            if last_val:
                self.log({"step": self.step, **last_val})
                bar.write(_format_val(self.step, last_val))
        final = self.save()  # the run folder's `latest` now names it
        if self.skipped:
            print(f"skipped {len(self.skipped)} unreadable image(s):")
            for e in self.skipped:
                print(f"  {e}")
        return {"step": self.step, "checkpoint": str(final), "complete": self.step >= cfg.steps, "precision": self.precision,
                "compile": self.compile_note, **last_val}


def _format_val(step: int, v: dict[str, float]) -> str:
    if not v:
        return f"step {step}: no validation set"
    return (
        f"step {step}: val PSNR {v['val_psnr']:.2f} SSIM {v['val_ssim']:.3f} | stage-1 {v['val_stage1_psnr']:.2f}/"
        f"{v['val_stage1_ssim']:.3f} | bicubic {v['val_bicubic_psnr']:.2f}/{v['val_bicubic_ssim']:.3f}"
    )


def load_pretrain_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)
