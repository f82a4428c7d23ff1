"""The settings of ``lrpo train`` (:class:`LRPOConfig`, with its reward and guard sections): typed,
one comment per field, checked as a whole by ``validate`` (which needs the RL's own step arithmetic,
hence here and not in :mod:`lrpo.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import DEGRADATION_PRESETS, ConfigError, DataConfig, DegradationConfig, launcher_world_size
from .losses import num_train_steps
from .timesteps import parse_timestep_selection


@dataclass
class RewardConfig:
    """The composite reward: a preset from lrpo.rewards.composite.PRESETS, or explicit terms."""

    preset: str = "offline"  # "paper" (needs downloaded weights), "offline", ... or "" for `terms` only
    # name -> {"weight": w, other keyword arguments of the term's factory}; replaces the preset's terms
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"  # where reward models run


@dataclass
class GuardConfig:
    """Reward-hacking guard: held-out metrics outside the reward must not fall (lrpo.rl.guards)."""

    every: int = 0  # epochs between guard evaluations (0 = off)
    metrics: tuple[str, ...] = ("psnr", "identity")  # from psnr, ssim, identity (SFace), lmd (YuNet)
    tolerance: float = 0.05  # allowed relative worsening from the value before RL
    action: Literal["warn", "stop", "rollback"] = "rollback"  # rollback: restore the best guarded epoch, stop
    preset: str = "mild"  # degradation preset of the held-out LQ (fixed seed 0)

    def validate(self, prefix: str = "guard") -> None:
        if self.every < 0 or self.tolerance < 0:
            raise ConfigError(f"{prefix}.every and {prefix}.tolerance must be >= 0, got {self.every}, {self.tolerance}")
        known = ("psnr", "ssim", "identity", "lmd")
        bad = [m for m in self.metrics if m not in known]
        if bad or (self.every and not self.metrics):
            raise ConfigError(f"{prefix}.metrics must be a non-empty list from {list(known)}, got {list(self.metrics)}")
        if self.preset not in DEGRADATION_PRESETS:
            raise ConfigError(f"{prefix}.preset must be one of {sorted(DEGRADATION_PRESETS)}, got {self.preset!r}")


@dataclass
class LRPOConfig:
    """Online RL of a pretrained policy (``lrpo train``, SPEC sections 2-6).

    Counts marked "global" are totals over all processes; "per process" ones are per rank.
    """

    out_dir: str = "runs/lrpo"
    init_checkpoint: str = ""  # pretrained policy (``lrpo pretrain`` run or checkpoint folder)
    init_ema: bool = True  # start from the checkpoint's EMA weights
    # full unpickling of the model files init_checkpoint's policy names (.ckpt/.pth from a source you
    # trust); only this run's own config or command line turns it on, never a checkpoint's config.yaml
    trust_pickle: bool = False
    seed: int = 0
    device: str = "auto"
    # network forward passes: fp32, bf16 (autocast) or auto (bf16 where the processor has bf16
    # units, lrpo.precision); log-probs, the PPO ratio and losses are always fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # compile the rollouts' and evaluations' sampling forward (lrpo.policies.compiled): auto = when
    # the run is long enough to pay back; the update stays eager and, when compiled (or in fp32),
    # recomputes log pi_old with its own forwards so that the first ratio of an epoch is exactly 1
    compile: Literal["auto", "off", "on"] = "auto"
    epochs: int = 10
    time_budget_min: float = 0.0  # stop (with a checkpoint) once this invocation has run this many minutes (0 = off)
    # the clock of time_budget_min: "wall" (elapsed time) or "cpu" (this process's CPU time, all
    # threads, so runs sharing cores get equal compute; benchmarks compare variants this way). Both
    # count this invocation, evaluations and checkpoints included, and are read between epochs
    time_budget_clock: Literal["wall", "cpu"] = "wall"
    group_size: int = 9  # G: candidates per LQ input (SPEC section 3)
    groups_per_epoch: int = 24  # global; 24 x 9 = 216 trajectories as in the reference
    rollout_groups_per_batch: int = 2  # per process: groups sampled in one forward batch
    sample_steps: int = 50  # DDIM steps of the rollouts
    eta: float = 1.0  # rollout stochasticity (SPEC: 1.0 for training)
    eval_eta: float = 0.8  # eta for evaluation/inference (SPEC section 8)
    train_fraction: float = 0.99  # first floor(fraction * steps) steps are updated
    # advantages (SPEC section 5)
    global_std: bool = True  # std over the whole batch (all processes) rather than per group
    adv_eps: float = 1e-4
    adv_clip: float = 5.0
    noise_level_weights: bool = True  # weight step j's advantage by sigma_j / mean(sigma)
    # objective (SPEC section 6)
    clip_range: float = 1e-4  # PPO epsilon
    # weight of the PPO policy-gradient term; 0 leaves only the GT-guided term: the supervised
    # control every claim that the RL helps must beat (README "Does the RL add?")
    pg_weight: float = 1.0
    reg_weight: float = 1e-3  # lambda of the GT-guided likelihood term (0 = "perception" model)
    reg_tau: float = 40.0
    reg_last_k: int = 5  # regularise the last K trained steps
    gt_path: Literal["marginal", "compounded"] = "marginal"  # compounded = the reference's
    kl_beta: float = 0.0  # KL to the frozen initial policy (0 = off, as in the reference)
    # update
    update_mode: Literal["per_timestep", "accumulate"] = "per_timestep"  # reference: one step per (minibatch, t)
    minibatch_size: int = 6  # per process, trajectories per update forward
    timesteps_per_forward: int = 1  # accumulate mode: timesteps stacked into one forward
    # which trained steps an epoch updates (lrpo.rl.timesteps): all | random:K (K per trajectory,
    # drawn per epoch) | random:K+reg (those K from the steps before the last reg_last_k, plus the
    # last reg_last_k every epoch) | window:K[:stride] (K consecutive steps sliding over epochs)
    train_timesteps: str = "all"
    # shared-prefix rollouts: a group's members share steps 0 .. branch_step-1 (one deterministic
    # eta-0 path per group) and branch there; only steps from branch_step on are trained, and
    # train_timesteps chooses among those (lrpo.diffusion.rollout.branched_rollout). 0 = off
    branch_step: int = 0
    inner_epochs: int = 1
    lr: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # EMA of the policy during RL (0 = off)
    # several processes (torchrun / accelerate launch): ddp = DistributedDataParallel (every process
    # holds the trainable weights and AdamW state); fsdp = FSDP2, which shards them (lrpo.engine)
    engine: Literal["ddp", "fsdp"] = "ddp"
    # bookkeeping
    ckpt_every: int = 1  # epochs
    keep_last: int = 2
    log_images_every: int = 0  # epochs between sample grids (0 = never)
    # log each epoch's update balance (gradient norms of the PG and lambda x GT terms on the first
    # minibatch, their cosine) and the reward's within-group signal against a 1-pixel shift
    # (lrpo.rl.diagnostics); costs one extra forward/backward and one extra reward pass per epoch
    diagnostics: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> None:
        for name in ("epochs", "group_size", "groups_per_epoch", "rollout_groups_per_batch", "sample_steps",
                     "minibatch_size", "timesteps_per_forward", "inner_epochs", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (advantages are relative to the group), got {self.group_size}")
        world = launcher_world_size()
        if self.groups_per_epoch % world:
            # every rank runs the same number of whole groups (lrpo.data.groups); found here, before
            # any process joins the group and waits for the others
            lower, upper = self.groups_per_epoch // world * world, (self.groups_per_epoch // world + 1) * world
            raise ConfigError(
                f"groups_per_epoch={self.groups_per_epoch} (global) is not divisible by WORLD_SIZE={world} processes; "
                f"use a multiple of {world} such as {f'{lower} or ' if lower else ''}{upper}"
            )
        if self.eta <= 0:
            raise ConfigError(f"eta must be > 0 for rollouts with log-probabilities, got {self.eta}")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        for name in ("clip_range", "reg_tau", "adv_eps", "adv_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("pg_weight", "reg_weight", "kl_beta", "weight_decay", "grad_clip", "reg_last_k", "keep_last", "log_images_every",
                     "time_budget_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.init_checkpoint:
            raise ConfigError("init_checkpoint is empty: LRPO starts from a pretrained policy (lrpo pretrain ...)")
        try:
            n_train = num_train_steps(self.sample_steps, self.train_fraction)
        except ValueError as e:
            raise ConfigError(f"train_fraction={self.train_fraction} with sample_steps={self.sample_steps}: {e}") from None
        if not 0 <= self.branch_step < n_train:
            raise ConfigError(f"branch_step must be in [0, {n_train}) (the {n_train} trained steps of sample_steps={self.sample_steps} "
                              f"with train_fraction={self.train_fraction}), got {self.branch_step}")
        branched = n_train - self.branch_step  # the steps an update may train
        if self.branch_step and self.reg_weight > 0 and self.reg_last_k > branched:
            raise ConfigError(f"reg_last_k={self.reg_last_k} reaches into the {self.branch_step} shared steps (branch_step): the GT-guided "
                              f"term trains only branched steps, of which there are {branched}; lower reg_last_k or branch_step")
        try:
            parse_timestep_selection(self.train_timesteps, branched, reg_last_k=self.reg_last_k)
        except ValueError as e:
            raise ConfigError(f"{e}{' (the steps from branch_step on)' if self.branch_step else ''}") from None
        if self.gt_path == "compounded" and self.reg_weight > 0 and n_train == self.sample_steps:
            # the reference's chain runs through the sampler's timesteps; the final step's target
            # (alphas_cumprod[0]) is not one of them, so that step has no compounded GT latent
            raise ConfigError(
                f"gt_path=compounded needs the final step untrained (train_fraction < 1, the reference's 0.99), "
                f"got train_fraction={self.train_fraction} with sample_steps={self.sample_steps}; "
                f"use gt_path=marginal to train every step"
            )
        self.data.validate()
        self.degradation.validate()
        self.guard.validate()
        if self.guard.every and not self.data.val_count:
            raise ConfigError("guard.every > 0 needs held-out faces: set data.val_count > 0")
