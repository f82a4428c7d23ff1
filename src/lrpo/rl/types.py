"""The data an LRPO epoch passes between its phases (collect -> score -> advantages -> update)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class RolloutBatch(NamedTuple):
    """The N trajectories one process collected in an epoch (N = its groups x G).

    group_ids [N] long; seeds [N] (trajectory seeds); names: face names;
    cond [N, ...] policy condition; gt_x0 [N, ...] GT in the policy's diffusion space;
    hq, lq [N, 3, R, R] in [0, 1]; latents [N, S+1, ...]; log_probs [N, S] float32;
    images [N, 3, R, R] in [0, 1]: the decoded final samples;
    captions: one caption (or None) per trajectory, for caption-scoring reward terms.
    """

    group_ids: Tensor
    seeds: list[int]
    names: list[str]
    cond: Tensor
    gt_x0: Tensor
    hq: Tensor
    lq: Tensor
    latents: Tensor
    log_probs: Tensor
    images: Tensor
    captions: list = []  # never mutated; a default keeps hand-built batches (benchmarks) short
