"""Process groups and the collectives the trainer uses; works under ``torchrun`` and ``accelerate launch``.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Rewards are
all-gathered for the global advantage std, scalar statistics and decisions (NaN stops, guard stops,
signals) are all-reduced so every process acts alike; gradients are the engine's business
(``lrpo.engine``: DDP or FSDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group described by the launcher's environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if "RANK" not in os.environ:
        raise RuntimeError(f"WORLD_SIZE={world} is set but RANK is not: start the processes with torchrun or "
                           f"accelerate launch (they set both), or unset WORLD_SIZE for one process")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world, store=_attempt_store(rank, world))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly after a finished run: every rank waits for the others, then
    releases gloo's or NCCL's threads before the interpreter exits (left to the interpreter's exit
    they can be torn down mid-use, and the process aborts with "terminate called without an
    active exception" after a run that succeeded)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _attempt_store(rank: int, world: int) -> "dist.Store | None":
    """Under torchrun, the store of this attempt only (None elsewhere: init_process_group's own).

    With the c10d rendezvous the workers of every attempt share the agent's store; the keys through
    which the ranks of an attempt find each other (gloo's and NCCL's addresses) would then still hold
    the killed attempt's values, and a restarted rank could dial a port that no longer listens. A
    prefix per restart keeps each attempt's keys apart.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store, timeout=timedelta(minutes=30),
                          multi_tenant=not agent_store)
    return dist.PrefixStore(f"lrpo/attempt_{restart}", store)


def all_gather_cat(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally sized tensors [n, ...] from every rank, rank order, on every rank."""
    if not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(ctx: DistContext, value: int | float) -> int | float:
    """The largest ``value`` over ranks, of the type given (int or float)."""
    if not ctx.enabled:
        return value
    is_float = isinstance(value, float)
    t = torch.tensor([value], dtype=torch.float64 if is_float else torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item()) if is_float else int(t.item())


def broadcast_floats(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """Rank 0's ``values`` on every process (the same keys on every process; floats only)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return {**values, **dict(zip(keys, t.tolist()))}


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
