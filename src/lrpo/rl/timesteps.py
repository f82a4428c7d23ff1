"""Which of a trajectory's trained steps an epoch's update trains (``train_timesteps``).

  all              every trained step j = 0 .. S_train-1 (the reference; SPEC section 6)
  random:K         K distinct steps per trajectory per epoch, drawn from a generator seeded by
                   (trajectory seed, epoch): the same on any number of processes, batch size or
                   resume, and different across epochs (each step is trained K/S_train of the time)
  random:K+reg     the last ``reg_last_k`` trained steps (those the GT-guided term uses) every
                   epoch, plus K drawn as above from the steps before them: the GT term keeps all
                   its steps while the PPO term trains K + reg_last_k per trajectory. The same
                   steps whatever ``reg_weight`` is (so lambda 0 against lambda > 0 compares the
                   term alone, on the same steps)
  window:K[:s]     the same K consecutive steps for every trajectory, starting at (epoch * s) mod
                   S_train and wrapping around; s defaults to K, so S_train/K epochs cover every step

Steps are indices into the sampler's timesteps (0 = the noisiest). Only the steps chosen here enter
the PPO term; the GT-guided likelihood term applies to the chosen steps that are among the last
``reg_last_k`` trained steps (so with random:K it is present on about K/S_train of its steps, as
the PPO term is, and the balance of the two terms is kept in expectation). With random:K+reg the GT
term is on all of its steps every epoch while the PPO term is on K + reg_last_k of S_train, so the
GT term weighs about S_train / (K + reg_last_k) times more against the PPO term than with ``all``
(the losses average over the steps trained); that is the point of it. The noise-level weight of a
step is its own whatever else is chosen.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..data.groups import derive_seed

_RANDOM_SALT = 0x7473  # "ts": keeps these draws apart from other uses of a trajectory's seed


class TimestepSelection(NamedTuple):
    kind: str  # "all" | "random" | "window"
    k: int = 0
    stride: int = 0
    last: int = 0  # random:K+reg: the last `last` trained steps are always chosen too

    @property
    def width(self) -> int:
        """Steps chosen per trajectory (0 for ``all``)."""
        return self.k + self.last


def parse_timestep_selection(spec: str, n_train: int, key: str = "train_timesteps", reg_last_k: int = 0) -> TimestepSelection:
    """``all`` | ``random:K`` | ``random:K+reg`` | ``window:K[:stride]`` with 1 <= K <= n_train
    (for ``+reg``: K <= n_train - min(reg_last_k, n_train)); errors name ``key``."""
    expected = (f"{key}: expected 'all', 'random:K', 'random:K+reg' or 'window:K[:stride]' with 1 <= K <= {n_train} "
                f"(the trained steps)")
    text = str(spec).strip()
    if text.startswith("random:") and text.endswith("+reg"):
        last = min(reg_last_k, n_train)
        count = text[len("random:") : -len("+reg")]
        if last < 1 or not count.isdigit() or not 1 <= int(count) <= n_train - last:
            raise ValueError(f"{key}: 'random:K+reg' needs reg_last_k >= 1 and 1 <= K <= {n_train - last} (the {n_train} trained "
                             f"steps less the last {last}), got {spec!r} with reg_last_k={reg_last_k}")
        return TimestepSelection("random", int(count), int(count), last)
    parts = text.split(":")
    if parts == ["all"]:
        return TimestepSelection("all")
    if parts[0] not in ("random", "window") or len(parts) not in ((2,) if parts[0] == "random" else (2, 3)):
        raise ValueError(f"{expected}, got {spec!r}")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"{expected}, got {spec!r}") from None
    k = numbers[0]
    stride = numbers[1] if len(numbers) > 1 else k
    if not 1 <= k <= n_train or stride < 1:
        raise ValueError(f"{expected} and stride >= 1, got {spec!r}")
    return TimestepSelection(parts[0], k, stride)


def selected_steps(sel: TimestepSelection, n_train: int, epoch: int, trajectory_seeds: list[int]) -> Tensor | None:
    """[N, sel.width] long: the steps each trajectory trains this epoch, ascending; None for ``all``."""
    n = len(trajectory_seeds)
    if sel.kind == "all":
        return None
    if sel.kind == "window":
        start = (epoch * sel.stride) % n_train
        row = torch.tensor([(start + i) % n_train for i in range(sel.k)]).sort().values
        return row.expand(n, -1).clone()
    rows = []
    pool = n_train - sel.last  # random:K+reg draws from the steps before the always-chosen last ones
    tail = torch.arange(pool, n_train)
    for seed in trajectory_seeds:
        gen = torch.Generator().manual_seed(derive_seed(seed, epoch, _RANDOM_SALT))
        rows.append(torch.cat([torch.randperm(pool, generator=gen)[: sel.k].sort().values, tail]))
    return torch.stack(rows) if rows else torch.zeros(0, sel.width, dtype=torch.long)
