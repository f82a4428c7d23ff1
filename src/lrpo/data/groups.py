"""Group sampler: which HQ faces form this epoch's groups, and which process handles each.

SPEC section 3: a group is G candidates restored from ONE LQ input; all G members must see the
identical LQ (same degradation parameters and the same noise). The reference implementation
repeated dataset indices and let a distributed sampler shard the repeated list, so a group's
copies were scattered over processes. Here the unit of sharding is the whole group:

1. ``plan_epoch`` picks ``groups_per_epoch`` dataset indices for an epoch from a permutation
   seeded by ``(seed, epoch)`` and gives each an integer ``group_id = epoch * groups_per_epoch + k``
   (unique across epochs) and a degradation ``seed = derive_seed(seed, epoch, group_id)``.
   The plan is the same in every process: it does not depend on rank or world size.
2. ``shard_groups`` deals whole groups to ranks: rank ``r`` takes plan positions
   ``k = r, r + W, r + 2W, ...`` (strided, like torch's DistributedSampler, so every rank's
   share is spread over the permutation).
3. ``make_group_lq`` degrades a group's HQ face once with a generator seeded by the group's seed
   and repeats the result G times, so the LQ does not depend on which rank or batch builds it.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, NamedTuple, Sequence, TypeVar

import torch
from torch.utils.data import Sampler

T = TypeVar("T")

DegradeFn = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, object]]


class Group(NamedTuple):
    """One group of the epoch plan.

    group_id: ``epoch * groups_per_epoch + k``; unique over the whole run.
    index: dataset index of the group's HQ face.
    seed: 63-bit seed of the group's degradation generator, from (sampler seed, epoch, group_id).
    """

    group_id: int
    index: int
    seed: int


def derive_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (BLAKE2b; the same in every process and Python run).

    Python's ``hash`` is not used: it is salted per process for strings and would differ between
    ranks. Each integer is encoded as 16 signed bytes, so different tuples (including tuples of
    different lengths) give different inputs to the hash.
    """
    if not values:
        raise ValueError("derive_seed needs at least one integer")
    data = bytearray()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"derive_seed takes integers, got {v!r} ({type(v).__name__})")
        data += v.to_bytes(16, "little", signed=True)
    digest = hashlib.blake2b(bytes(data), digest_size=8).digest()
    # 63 bits so the seed fits a signed int64 as well as torch.Generator.manual_seed
    return int.from_bytes(digest, "little") >> 1


def _suggest_multiples(n: int, k: int) -> str:
    lower, upper = (n // k) * k, (n // k + 1) * k
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def shard_groups(group_ids: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of an epoch's groups: positions ``rank, rank + W, rank + 2W, ...``.

    Works on group ids or on :class:`Group` tuples alike. The count must divide evenly, so every
    rank runs the same number of groups (and of collective steps); otherwise ValueError.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}] for world_size={world_size}, got {rank}")
    if len(group_ids) % world_size:
        raise ValueError(
            f"{len(group_ids)} groups cannot be split evenly over world_size={world_size} processes; "
            f"use a multiple of {world_size} such as {_suggest_multiples(len(group_ids), world_size)}"
        )
    return list(group_ids[rank::world_size])


def plan_epoch(dataset_size: int, groups_per_epoch: int, seed: int, epoch: int) -> list[Group]:
    """All groups of ``epoch``, in order ``k = 0 .. groups_per_epoch - 1`` (same on every rank).

    The indices follow one random permutation of the dataset seeded by ``(seed, epoch)``; when
    ``groups_per_epoch > dataset_size`` the permutation repeats (position ``k`` takes element
    ``k mod dataset_size``), so every face is used ``floor`` or ``ceil`` of
    ``groups_per_epoch / dataset_size`` times, each time as a distinct group with its own seed.
    """
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    if groups_per_epoch < 1:
        raise ValueError(f"groups_per_epoch must be >= 1, got {groups_per_epoch}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    order = torch.randperm(dataset_size, generator=generator).tolist()
    groups = []
    for k in range(groups_per_epoch):
        group_id = epoch * groups_per_epoch + k
        groups.append(Group(group_id, order[k % dataset_size], derive_seed(seed, epoch, group_id)))
    return groups


class GroupSampler(Sampler):
    """This rank's groups per epoch, complete by construction under any number of processes.

    Args:
        dataset_size: number of HQ faces.
        group_size: G, candidates per group (all share one LQ input).
        groups_per_epoch: groups in one epoch over ALL ranks together; must be a multiple of
            ``world_size`` so every rank gets ``groups_per_epoch / world_size`` whole groups.
        seed: run seed; the plan and each group's degradation seed derive from it.
        rank, world_size: this process and the number of processes.

    Use :meth:`batches` in the trainer, or iterate: ``iter(sampler)`` yields
    ``(group_id, index)`` once per member, G consecutive entries per group.
    """

    def __init__(
        self,
        dataset_size: int,
        group_size: int,
        groups_per_epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if groups_per_epoch < 1:
            raise ValueError(f"groups_per_epoch must be >= 1, got {groups_per_epoch}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}] for world_size={world_size}, got {rank}")
        if groups_per_epoch % world_size:
            raise ValueError(
                f"groups_per_epoch={groups_per_epoch} is not divisible by world_size={world_size}: every "
                f"process must get the same number of whole groups; use "
                f"{_suggest_multiples(groups_per_epoch, world_size)}"
            )
        self.dataset_size = dataset_size
        self.group_size = group_size
        self.groups_per_epoch = groups_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def groups(self, epoch: int | None = None) -> list[Group]:
        """This rank's groups for ``epoch`` (default: the one set by :meth:`set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        plan = plan_epoch(self.dataset_size, self.groups_per_epoch, self.seed, epoch)
        return shard_groups(plan, self.rank, self.world_size)

    def batches(self, groups_per_batch: int, epoch: int | None = None) -> list[list[Group]]:
        """This rank's groups in consecutive chunks of ``groups_per_batch``.

        The last chunk is shorter when the per-rank count is not a multiple; since every rank has
        the same count, all ranks still see the same number of batches with the same sizes.
        """
        if groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
        mine = self.groups(epoch)
        return [mine[i : i + groups_per_batch] for i in range(0, len(mine), groups_per_batch)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for group in self.groups():
            for _ in range(self.group_size):
                yield group.group_id, group.index

    def __len__(self) -> int:
        return self.groups_per_epoch // self.world_size * self.group_size

    def state_dict(self) -> dict:
        """What a resumed run needs to rebuild the same plan (rank and world size may change)."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "dataset_size": self.dataset_size,
            "groups_per_epoch": self.groups_per_epoch,
            "group_size": self.group_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the epoch; refuses a state whose plan settings differ from this sampler's."""
        for key in ("seed", "dataset_size", "groups_per_epoch", "group_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {key}={getattr(self, key)!r}; "
                    "resuming would silently change which faces and degradations each step uses"
                )
        self.set_epoch(int(state["epoch"]))


def make_group_lq(hq: torch.Tensor, group: Group, group_size: int, degrade_fn: DegradeFn) -> torch.Tensor:
    """The LQ input of one group, repeated for its G members.

    Args:
        hq: float ``3 x H x W`` in [0, 1], the group's HQ face.
        group: supplies the degradation seed.
        group_size: G.
        degrade_fn: ``(hq_batch [B, 3, H, W] in [0, 1], generator) -> (lq_batch, params)``, e.g.
            ``functools.partial(lrpo.degradation.degrade, cfg=...)``. Called once, with a CPU
            ``torch.Generator`` seeded by ``group.seed``.

    Returns:
        float ``G x 3 x H' x W'`` (H', W' as ``degrade_fn`` returns them), G identical copies in
        contiguous memory (members are later perturbed independently, so no shared storage).
    """
    if hq.ndim != 3 or hq.shape[0] != 3:
        raise ValueError(f"make_group_lq expects hq of shape [3, H, W], got {tuple(hq.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    generator = torch.Generator().manual_seed(group.seed)
    lq, _params = degrade_fn(hq[None], generator)
    if lq.ndim != 4 or lq.shape[0] != 1 or lq.shape[1] != 3:
        raise ValueError(f"degrade_fn must return lq of shape [1, 3, H, W] for one input, got {tuple(lq.shape)}")
    return lq.expand(group_size, -1, -1, -1).contiguous()


__all__ = ["Group", "GroupSampler", "derive_seed", "plan_epoch", "shard_groups", "make_group_lq"]
