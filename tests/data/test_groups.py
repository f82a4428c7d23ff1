"""lrpo.data.groups: whole groups per rank, deterministic plans, rank-independent group LQ."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
import torch

from lrpo.data.groups import Group, GroupSampler, derive_seed, make_group_lq, plan_epoch, shard_groups

G = 9  # SPEC section 3


def _fake_degrade(hq: torch.Tensor, generator: torch.Generator):
    """Stand-in for lrpo.degradation.degrade: noise drawn from the generator, as the real one does."""
    noise = torch.randn(hq.shape, generator=generator)
    return (hq + 0.1 * noise).clamp(0, 1), {"noise_std": 0.1}


# ---------------------------------------------------------------------------------------------
# derive_seed
# ---------------------------------------------------------------------------------------------
def test_derive_seed_definition_and_pin():
    # the definition: BLAKE2b-64 of each integer as 16 little-endian signed bytes, top 63 bits
    data = b"".join(v.to_bytes(16, "little", signed=True) for v in (7, 3, 42))
    expected = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    assert derive_seed(7, 3, 42) == expected
    # pinned values: a change here changes every run's groups and degradations, so old runs
    # could no longer be resumed or reproduced
    assert derive_seed(0, 0) == 0x50A0D7C5250906E2
    assert derive_seed(2026, 1, 5) == 0x156AE96F351E7718


def test_derive_seed_properties():
    seeds = [derive_seed(1, 2), derive_seed(2, 1), derive_seed(1, 2, 0), derive_seed(-1, 2), derive_seed(1)]
    assert len(set(seeds)) == len(seeds)  # order, length and sign all matter
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(TypeError):
        derive_seed(1, 2.0)
    with pytest.raises(TypeError):
        derive_seed(True)
    with pytest.raises(ValueError):
        derive_seed()


# ---------------------------------------------------------------------------------------------
# plan_epoch
# ---------------------------------------------------------------------------------------------
def test_plan_is_a_permutation_with_global_ids():
    plan = plan_epoch(dataset_size=10, groups_per_epoch=10, seed=0, epoch=3)
    assert [g.group_id for g in plan] == list(range(30, 40))  # epoch * groups_per_epoch + k
    assert sorted(g.index for g in plan) == list(range(10))
    assert [g.seed for g in plan] == [derive_seed(0, 3, gid) for gid in range(30, 40)]


def test_plan_fewer_groups_than_images_uses_distinct_images():
    plan = plan_epoch(dataset_size=50, groups_per_epoch=12, seed=1, epoch=0)
    assert len({g.index for g in plan}) == 12


def test_plan_wraps_when_more_groups_than_images():
    # 23 groups over 5 images: position k takes permutation element k mod 5, so each image is used
    # floor(23/5) = 4 or ceil(23/5) = 5 times: residues 0, 1, 2 of k = 0..22 occur 5 times, 3 and 4 occur
    # 4 times (3 * 5 + 2 * 4 = 23)
    plan = plan_epoch(dataset_size=5, groups_per_epoch=23, seed=2, epoch=1)
    assert all(plan[k].index == plan[k % 5].index for k in range(23))
    assert sorted(Counter(g.index for g in plan).values()) == [4, 4, 5, 5, 5]
    # repeated images are still distinct groups with distinct degradation seeds
    assert len({g.group_id for g in plan}) == len({g.seed for g in plan}) == 23


def test_plan_deterministic_and_varies_with_epoch_and_seed():
    a = plan_epoch(40, 40, seed=5, epoch=2)
    assert a == plan_epoch(40, 40, seed=5, epoch=2)
    # 40! orders: the chance that two independent permutations coincide is negligible
    assert [g.index for g in a] != [g.index for g in plan_epoch(40, 40, seed=5, epoch=3)]
    assert [g.index for g in a] != [g.index for g in plan_epoch(40, 40, seed=6, epoch=2)]


def test_group_ids_unique_across_epochs():
    ids = [g.group_id for e in range(5) for g in plan_epoch(7, 6, seed=0, epoch=e)]
    assert ids == list(range(30))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset_size=0, groups_per_epoch=3, seed=0, epoch=0), "dataset_size"),
        (dict(dataset_size=3, groups_per_epoch=0, seed=0, epoch=0), "groups_per_epoch"),
        (dict(dataset_size=3, groups_per_epoch=3, seed=0, epoch=-1), "epoch"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_epoch(**kwargs)


# ---------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------
def test_shard_groups_is_strided():
    ids = list(range(100, 112))
    assert shard_groups(ids, 0, 3) == [100, 103, 106, 109]
    assert shard_groups(ids, 2, 3) == [102, 105, 108, 111]
    assert shard_groups(ids, 0, 1) == ids


def test_shard_groups_uneven_raises_with_suggestion():
    with pytest.raises(ValueError, match="use a multiple of 3 such as 9 or 12"):
        shard_groups(list(range(10)), 0, 3)
    with pytest.raises(ValueError, match="rank"):
        shard_groups(list(range(6)), 3, 3)


@pytest.mark.parametrize("dataset_size", [5, 30])  # wrapping and non-wrapping plans
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_run_the_single_process_plan(dataset_size, world_size):
    groups_per_epoch = 12
    single = GroupSampler(dataset_size, G, groups_per_epoch, seed=11)
    ranks = [
        GroupSampler(dataset_size, G, groups_per_epoch, seed=11, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in range(4):
        for s in [single, *ranks]:
            s.set_epoch(epoch)
        plan = single.groups()
        per_rank = [s.groups() for s in ranks]
        # equal shares, and every group on exactly one rank: nothing duplicated or lost
        assert [len(p) for p in per_rank] == [groups_per_epoch // world_size] * world_size
        owners = Counter(g.group_id for p in per_rank for g in p)
        assert set(owners) == {g.group_id for g in plan} and set(owners.values()) == {1}
        assert sorted(g for p in per_rank for g in p) == sorted(plan)  # same index and seed too

        # sample level: each rank yields all G members of each of its groups, consecutively
        for sampler, mine in zip(ranks, per_rank):
            samples = list(sampler)
            assert len(samples) == len(sampler) == len(mine) * G
            for j, group in enumerate(mine):
                assert samples[j * G : (j + 1) * G] == [(group.group_id, group.index)] * G
        members = Counter(s for sampler in ranks for s in sampler)
        assert members == Counter({(g.group_id, g.index): G for g in plan})


def test_group_seeds_do_not_depend_on_world_size():
    def seeds(world_size: int) -> dict[int, tuple[int, int]]:
        out = {}
        for r in range(world_size):
            for g in GroupSampler(20, G, 24, seed=3, rank=r, world_size=world_size).groups(epoch=2):
                out[g.group_id] = (g.index, g.seed)
        return out

    assert seeds(1) == seeds(2) == seeds(3) == seeds(4)


def test_sampler_uneven_split_raises():
    with pytest.raises(ValueError, match=r"groups_per_epoch=10 is not divisible by world_size=3.*9 or 12"):
        GroupSampler(20, G, 10, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="use 4"):  # no positive multiple below 3 for world_size 4
        GroupSampler(20, G, 3, seed=0, rank=0, world_size=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset_size=0), "dataset_size"),
        (dict(group_size=0), "group_size"),
        (dict(groups_per_epoch=0), "groups_per_epoch"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(rank=-1), "rank"),
        (dict(world_size=0), "world_size"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, match):
    args = dict(dataset_size=10, group_size=G, groups_per_epoch=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        GroupSampler(**args)


def test_set_epoch_and_explicit_epoch_agree():
    sampler = GroupSampler(10, G, 4, seed=0, rank=1, world_size=2)
    epoch5 = sampler.groups(epoch=5)
    assert sampler.epoch == 0 and sampler.groups() != epoch5
    sampler.set_epoch(5)
    assert sampler.groups() == epoch5
    assert [g.group_id for g in epoch5] == [21, 23]  # 5 * 4 + k for k = 1, 3
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)


def test_batches_chunk_this_ranks_groups():
    ranks = [GroupSampler(30, G, 14, seed=0, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        batches = sampler.batches(groups_per_batch=3)
        # 7 groups per rank -> 3 + 3 + 1, the same shapes on both ranks (collectives stay in step)
        assert [len(b) for b in batches] == [3, 3, 1]
        assert [g for b in batches for g in b] == sampler.groups()
    assert ranks[0].batches(3, epoch=1) != ranks[0].batches(3, epoch=0)
    with pytest.raises(ValueError, match="groups_per_batch"):
        ranks[0].batches(0)


def test_state_dict_round_trip_and_mismatch():
    sampler = GroupSampler(10, G, 4, seed=7)
    sampler.set_epoch(3)
    state = sampler.state_dict()
    # resuming on another number of processes is allowed: the plan does not depend on it
    resumed = GroupSampler(10, G, 4, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert resumed.epoch == 3 and set(resumed.groups()) <= set(sampler.groups())
    with pytest.raises(ValueError, match="seed=7"):
        GroupSampler(10, G, 4, seed=8).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# make_group_lq
# ---------------------------------------------------------------------------------------------
def test_make_group_lq_copies_one_degradation():
    hq = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    group = Group(group_id=4, index=1, seed=derive_seed(0, 0, 4))
    calls = []

    def counting_degrade(batch, generator):
        calls.append(batch.shape)
        return _fake_degrade(batch, generator)

    lq = make_group_lq(hq, group, G, counting_degrade)
    assert calls == [(1, 3, 8, 8)]  # one degradation per group, not one per member
    assert lq.shape == (G, 3, 8, 8) and lq.is_contiguous()
    assert all(torch.equal(lq[i], lq[0]) for i in range(G))
    assert not torch.equal(lq[0], hq)  # the fake really degraded it
    expected, _ = _fake_degrade(hq[None], torch.Generator().manual_seed(group.seed))
    assert torch.equal(lq[0], expected[0])
    lq[0].zero_()  # members own their memory: perturbing one leaves the others alone
    assert torch.equal(lq[1], expected[0])


def test_group_lq_is_the_same_on_any_rank():
    hq_faces = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    def lq_by_group(world_size: int) -> dict[int, torch.Tensor]:
        out = {}
        for r in range(world_size):
            sampler = GroupSampler(6, G, 12, seed=9, rank=r, world_size=world_size)
            # different ranks and batch sizes process the groups in different orders
            for batch in sampler.batches(groups_per_batch=r + 1):
                for g in batch:
                    out[g.group_id] = make_group_lq(hq_faces[g.index], g, G, _fake_degrade)
        return out

    one, three = lq_by_group(1), lq_by_group(3)
    assert one.keys() == three.keys() and len(one) == 12
    assert all(torch.equal(one[k], three[k]) for k in one)
    # the same face in two groups (12 groups over 6 faces) gets two different degradations
    plan = plan_epoch(6, 12, seed=9, epoch=0)
    first, second = plan[0], plan[6]
    assert first.index == second.index and not torch.equal(one[first.group_id], one[second.group_id])


def test_make_group_lq_rejects_bad_shapes():
    group = Group(0, 0, 1)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        make_group_lq(torch.rand(1, 3, 4, 4), group, G, _fake_degrade)
    with pytest.raises(ValueError, match="degrade_fn"):
        make_group_lq(torch.rand(3, 4, 4), group, G, lambda b, g: (b[0], {}))
    with pytest.raises(ValueError, match="group_size"):
        make_group_lq(torch.rand(3, 4, 4), group, 0, _fake_degrade)
