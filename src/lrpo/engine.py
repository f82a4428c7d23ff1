"""How the trainable weights' gradients reach every process: one engine per LRPO run.

  local  one process: a plain backward, nothing to synchronise;
  ddp    torch's DistributedDataParallel around the policy: gradients travel in buckets while the
         backward still runs (overlapped with it); backwards that only accumulate skip the
         all-reduce (``no_sync``); every process holds the whole ControlNet and its AdamW state;
  fsdp   FSDP2 (``fully_shard``) on the policy's shard units (the ControlNet's blocks, then the
         ControlNet): its weights, gradients and AdamW states are split over the processes and each
         unit's weights are gathered for its forward and backward only.

Losses and gradients: each process scales its loss by its share of the step's samples (local count
/ global count) and the engines *sum* gradients over processes (DDP with a summing comm hook, FSDP
with a divide factor of 1), so a step's gradient is that of the mean over every sample of every
process, however unevenly the kept samples are spread. A process without samples in a step still
runs one forward and backward (scaled by 0): DDP and FSDP need every process in every collective.

Checkpoints do not depend on the engine or the number of processes: weights, EMA and optimiser state
are gathered to whole tensors and the optimiser state is keyed by parameter name, so a run saved on
4 processes with FSDP resumes on 1 process, or on 3 with DDP, exactly.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed import DistContext

EngineKind = Literal["ddp", "fsdp"]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor  # optional: not in every torch build
    except ImportError:  # torch without DTensor: nothing is ever sharded
        return None
    return DTensor


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor behind ``t`` (a DTensor shard is gathered: every process must call this)."""
    DTensor = _dtensor_type()
    if DTensor is not None and isinstance(t, DTensor):
        return t.full_tensor()
    return t


def local_like(value: Tensor, like: Tensor) -> Tensor:
    """``value`` (a whole tensor) laid out as ``like``: this process's shard when ``like`` is a
    DTensor (cut locally: every process holds the whole tensor, nothing is communicated)."""
    DTensor = _dtensor_type()
    if DTensor is not None and isinstance(like, DTensor) and not isinstance(value, DTensor):
        from torch.distributed.tensor import distribute_tensor  # optional: not in every torch build

        value = value.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
    return value


def full_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every entry whole and on the CPU (collective when anything is sharded)."""
    return {k: full_tensor(v).detach().cpu() for k, v in sd.items()}


def local_state_dict(sd: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Whole tensors ``sd`` laid out as the live tensors ``like`` (entries missing there kept as they are)."""
    return {k: local_like(v, like[k]) if k in like else v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# optimiser state keyed by parameter name
# ------------------------------------------------------------------------------------------------
def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names in place of positions and whole tensors.

    ``names`` maps id(parameter) -> its name in the policy. Positions depend on how the parameters
    were listed and sharded; names do not, so the state loads into any engine and world size.
    """
    order = [p for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    pos_name = [names[id(p)] for p in order]
    state = {pos_name[i]: {k: full_tensor(v).detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in sd["state"].items()}
    groups = [{**g, "params": [pos_name[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"format": "by_name", "state": state, "param_groups": groups}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, sd: dict[str, Any], names: dict[int, str], source: str = "state") -> None:
    """Inverse of :func:`optimizer_state_by_name` (an older positional state loads as it is)."""
    order = [p for group in optimizer.param_groups for p in group["params"]]
    if sd.get("format") != "by_name":  # positional (older checkpoints): positions are the live order
        if len([i for g in sd["param_groups"] for i in g["params"]]) != len(order):
            raise ValueError(f"{source}: the optimiser state holds another number of parameters than the trainable weights")
        pos_name = [names[id(p)] for p in order]
        sd = {"format": "by_name", "state": {pos_name[i]: st for i, st in sd["state"].items()},
              "param_groups": [{**g, "params": [pos_name[i] for i in g["params"]]} for g in sd["param_groups"]]}
    pos_of = {names[id(p)]: i for i, p in enumerate(order)}
    saved = [n for g in sd["param_groups"] for n in g["params"]]
    missing, unexpected = sorted(set(pos_of) - set(saved)), sorted(set(saved) - set(pos_of))
    if missing or unexpected:
        raise ValueError(f"{source}: the optimiser state does not match the trainable weights: "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    state = {}
    for name, s in sd["state"].items():
        p = order[pos_of[name]]
        state[pos_of[name]] = {k: local_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
    # load_state_dict pairs the listed ids with the live parameters in the live order: list them so
    groups = []
    for saved_group, live_group in zip(sd["param_groups"], optimizer.param_groups, strict=True):
        live_names = [names[id(p)] for p in live_group["params"]]
        if set(live_names) != set(saved_group["params"]):
            raise ValueError(f"{source}: the optimiser's parameter groups hold other parameters than the saved ones")
        groups.append({**saved_group, "params": [pos_of[n] for n in live_names]})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------
# engines
# ------------------------------------------------------------------------------------------------
class Engine:
    """One process, or the base of the multi-process engines."""

    kind = "local"
    every_process_computes = False  # must a process without samples still run forward + backward?

    def __init__(self, ctx: DistContext, policy: nn.Module):
        self.ctx = ctx
        self.policy = policy
        self.module: Callable[..., Tensor] = policy  # what differentiable forwards call

    def params(self) -> list[nn.Parameter]:
        return [p for p in self.policy.trainable_parameters() if p.requires_grad]

    def names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.policy.named_parameters()}

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        """Backwards inside only accumulate (no communication); the next one outside synchronises."""
        yield

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        if max_norm <= 0:
            return 0.0
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm)))


def _sum_allreduce_hook(state, bucket):  # (no annotations: DDP checks them, and ours are strings)
    """DDP comm hook: sum the bucket over processes (DDP's default divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class DDPEngine(Engine):
    kind = "ddp"
    every_process_computes = True

    def __init__(self, ctx: DistContext, policy: nn.Module, bucket_mb: float = 25.0):
        super().__init__(ctx, policy)
        from torch.nn.parallel import DistributedDataParallel  # optional: torch.distributed, several processes only

        device_ids = [policy_device(policy).index] if policy_device(policy).type == "cuda" else None
        # buffers are not trained: no broadcast before each forward (the keyword's name changed in torch 2.12)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(policy, device_ids=device_ids, bucket_cap_mb=bucket_mb,
                                           gradient_as_bucket_view=True, **no_buffer_sync)
        self.ddp.register_comm_hook(None, _sum_allreduce_hook)
        self.module = self.ddp

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        with self.ddp.no_sync():
            yield


class FSDPEngine(Engine):
    kind = "fsdp"
    every_process_computes = True

    def __init__(self, ctx: DistContext, policy: nn.Module):
        super().__init__(ctx, policy)
        from torch.distributed.fsdp import fully_shard  # optional: torch.distributed, several processes only

        units = getattr(policy, "fsdp_units", None)
        if units is None:
            raise ValueError(f"engine=fsdp: the policy {type(policy).__name__} does not name its shard units "
                             "(fsdp_units); use engine=ddp")
        self.units = []
        for unit in units():  # inner blocks first, the module that holds them last
            fully_shard(unit)
            unit.set_gradient_divide_factor(1.0)  # sum over processes (module docstring)
            if hasattr(unit, "set_force_sum_reduction_for_comms"):  # a plain SUM: gloo has no pre-multiplied sum
                unit.set_force_sum_reduction_for_comms(True)
            self.units.append(unit)
        DTensor = _dtensor_type()
        whole = [n for n, p in policy.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if whole:  # its gradient would never be summed over processes
            raise ValueError(f"engine=fsdp shards {type(policy).__name__}'s fsdp_units, but {len(whole)} trainable parameters "
                             f"lie outside them ({whole[0]}, ...; e.g. LoRA adapters in the UNet with lora_unet=true): "
                             "use engine=ddp")

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        for unit in self.units:
            unit.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for unit in self.units:
                unit.set_requires_gradient_sync(True)


def make_engine(kind: EngineKind, ctx: DistContext, policy: nn.Module) -> Engine:
    """The engine for ``kind`` (one process always gets the local engine)."""
    if not ctx.enabled:
        return Engine(ctx, policy)
    if kind == "ddp":
        return DDPEngine(ctx, policy)
    if kind == "fsdp":
        return FSDPEngine(ctx, policy)
    raise ValueError(f"engine={kind!r}: expected 'ddp' or 'fsdp'")


def policy_device(policy: nn.Module) -> torch.device:
    for p in policy.parameters():
        return p.device
    return torch.device("cpu")
