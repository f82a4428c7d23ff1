"""Checkpoints of an LRPO run: save, resume (refusing changed settings) and the guard's best state.

:class:`CheckpointMethods` holds these methods of :class:`~lrpo.rl.trainer.LRPOTrainer` (which
inherits them); they read the trainer's cfg, ctx, policy, engine, optimizer, ema, out_dir, history,
guard_baseline and best. A checkpoint holds all the state a resume needs: whole weights (gathered
under FSDP), the optimiser state by parameter name, the torch RNG state and the run's history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .. import checkpoint as ckpt_io
from ..config import to_dict
from ..engine import full_state_dict, load_optimizer_state_by_name, local_state_dict, optimizer_state_by_name
from ..policies import policy_state_dict
from ..runlog import rewrite_log
from ..runs import check_resume, config_changes
from .config import LRPOConfig
from .guards import guard_violations

# settings a resume may change: budgets, logging, device and the epochs to go; any other difference
# from the checkpoint's config changes the run's trajectory and needs allow_changes
# (and the engine: checkpoints hold whole tensors, optimiser state by name, whatever wrote them)
RESUMABLE_KEYS = ("epochs", "time_budget_min", "time_budget_clock", "device", "out_dir", "ckpt_every", "keep_last", "log_images_every",
                  "reward.device", "data.skip_bad", "engine", "trust_pickle")


class CheckpointMethods:
    """Save / resume / best-state rollback of :class:`~lrpo.rl.trainer.LRPOTrainer`."""

    def save(self, epoch: int, name: str | None = None) -> Path | None:
        # whole tensors (under FSDP every process takes part in gathering its shards); rank 0 writes
        if self.ctx.is_main or self.engine.kind == "fsdp":
            weights = full_state_dict(policy_state_dict(self.policy))
            optimizer = optimizer_state_by_name(self.optimizer, self.engine.names())
            ema = full_state_dict(self.ema.state_dict()) if self.ema is not None else None
        if not self.ctx.is_main:
            self.saved_epoch = epoch if name is None else self.saved_epoch  # the same on every process
            return None
        config = {
            # trust_pickle is the user's say for this run only: a checkpoint never carries it on
            "policy": {k: v for k, v in to_dict(self.policy.cfg).items() if k != "trust_pickle"},
            "diffusion": {**to_dict(self.diffusion_cfg), "sample_steps": self.cfg.sample_steps, "eta": self.cfg.eval_eta},
            "lrpo": {**to_dict(self.cfg), "trust_pickle": False},
        }
        state = {
            "epoch": epoch,
            "optimizer": optimizer,
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "world_size": self.ctx.world_size,
            "guard_baseline": self.guard_baseline,
            "best": self.best,
        }
        path = ckpt_io.save_checkpoint(
            self.out_dir, epoch, weights, config, state, ema=ema,
            kind="lrpo", keep_last=self.cfg.keep_last, name=name,
        )
        if name is None:
            self.saved_epoch = epoch
        return path

    def _resume_changes(self, ckpt: Path) -> dict[str, tuple[Any, Any]]:
        """The settings a resume from ``ckpt`` would change, read from its config.yaml alone; refuses
        (unless allowed) before state.pt or any weights are read. ``minibatch_size`` is left to
        :meth:`load`: with another number of processes the global minibatch is what must match."""
        if ckpt_io.load_meta(ckpt).get("kind") != "lrpo":
            raise ckpt_io.CheckpointError(f"{ckpt} is not an LRPO checkpoint; pass it as init_checkpoint instead of --resume")
        saved_cfg = ckpt_io.load_config_dict(ckpt).get("lrpo", {})
        changes = config_changes(saved_cfg if isinstance(saved_cfg, dict) else {}, to_dict(self.cfg), RESUMABLE_KEYS,
                                 defaults=to_dict(LRPOConfig()), paths=("init_checkpoint", "data.hq", "data.captions"))
        check_resume(ckpt, {k: v for k, v in changes.items() if k != "minibatch_size"}, self.allow_changes)
        return changes

    def load(self, path: str | Path) -> None:
        ckpt = ckpt_io.find_checkpoint(path)
        changes = self._resume_changes(ckpt)
        state = ckpt_io.load_state(ckpt)  # data only (weights_only): nothing in it runs
        ckpt_io.require_state_fields(state, ckpt, {"epoch": int, "torch_rng": torch.Tensor, "optimizer": dict})
        ckpt_io.require_optional_state(state, ckpt, ("history", "best", "guard_baseline"))
        old_world = state.get("world_size", 1)
        if old_world != self.ctx.world_size:
            # minibatch_size is per process: what must not change is the global minibatch
            old_mb = changes["minibatch_size"][0] if "minibatch_size" in changes else self.cfg.minibatch_size
            changes.pop("minibatch_size", None)
            if old_mb * old_world != self.cfg.minibatch_size * self.ctx.world_size:
                changes[f"global minibatch (minibatch_size x {self.ctx.world_size} processes)"] = (
                    f"{old_mb} x {old_world} = {old_mb * old_world}", self.cfg.minibatch_size * self.ctx.world_size)
        allowed = check_resume(ckpt, changes, self.allow_changes)
        if self.ema is not None and not (ckpt / "ema.safetensors").is_file():
            raise ckpt_io.CheckpointError(f"{ckpt / 'ema.safetensors'}: missing, but ema_decay={self.cfg.ema_decay} needs it")
        self._load_weights(ckpt)
        load_optimizer_state_by_name(self.optimizer, state["optimizer"], self.engine.names(), source=str(ckpt))
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.saved_epoch = self.resumed_from = self.epoch
        self.history = state.get("history") or []
        self.guard_baseline = state.get("guard_baseline")
        self.best = tuple(state["best"]) if state.get("best") is not None else None
        if allowed:
            self.pending_records.append({"epoch": self.epoch, "config_changes": allowed})
        if self.ctx.is_main:
            rewrite_log(self.out_dir / "log.jsonl", self.history)

    def _load_weights(self, ckpt: Path) -> None:
        """The policy's (and the EMA's) weights from ``ckpt``, cut into this process's shards under FSDP."""
        ckpt_io.load_weights(self.policy, ckpt, layout=lambda sd: local_state_dict(sd, self.policy.state_dict()))
        if self.ema is not None and (ckpt / "ema.safetensors").is_file():
            self.ema.load_state_dict(local_state_dict(load_file(str(ckpt / "ema.safetensors")), self.ema.state_dict()))

    def check_guard(self, rec: dict) -> bool:
        """Compare the guard metrics in ``rec`` with the start; True when training must stop."""
        cfg = self.cfg.guard
        violations = guard_violations(self.guard_baseline or {}, _guard_values(rec), cfg.metrics, cfg.tolerance)
        rec["guard_violations"] = violations
        if not violations:
            if self.best is None or rec["eval_reward"] > self.best[1]:
                self.best = (self.epoch, rec["eval_reward"])
                self.save(self.epoch, name="best")
            return False
        msg = f"guard: epoch {self.epoch}: held-out " + "; ".join(violations)
        if self.progress or self.ctx.is_main:
            print(msg + (" -> continuing (action=warn)" if cfg.action == "warn" else f" -> {cfg.action}"))
        return cfg.action != "warn"

    def rollback_to_best(self) -> None:
        """Load the best accepted state's weights (the initial policy if no later epoch was better)
        and point the run's ``latest`` at it."""
        self._load_weights(self.out_dir / "best")
        if self.ctx.is_main:
            ckpt_io.set_latest(self.out_dir, "best")
            self.log({"epoch": self.epoch, "rolled_back_to_epoch": self.best[0]})


def _guard_values(rec: dict) -> dict[str, float]:
    return {k[len("guard_"):]: v for k, v in rec.items() if k.startswith("guard_") and isinstance(v, float)}
