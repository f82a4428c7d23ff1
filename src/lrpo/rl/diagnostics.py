"""What each term of the LRPO update contributes, and whether the reward's ranking is signal.

Logged every epoch (``diagnostics: true``) so that a run shows *why* the policy moved:

* :func:`gradient_balance` — on the first minibatch of an epoch, the gradient norm of the
  policy-gradient term and of lambda x the GT-guided term, computed separately on one forward, and
  the cosine between them. A PG norm of a few percent of the GT term's means Adam follows the GT
  term: the update is then supervised fine-tuning whatever the reward says.
* :func:`group_signal_to_noise` — the epoch's own groups: the within-group spread of the reward
  (what group-relative advantages are made of) against how much the reward moves when every image
  is shifted by one pixel (an invisible change). At a ratio near 1 the advantages are mostly noise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..eval.stats import signal_to_noise


def shift_one_pixel(images: Tensor) -> Tensor:
    """[N, C, H, W] moved right by one pixel (the first column repeated): an invisible change."""
    return torch.cat([images[..., :1], images[..., :-1]], dim=-1)


def gradient_balance(pg_grads: list[Tensor | None], reg_grads: list[Tensor | None]) -> dict[str, float]:
    """Norms of two gradients over the same parameters, their ratio and cosine.

    ``None`` entries (a parameter a term does not reach) count as zeros. The cosine of a zero
    gradient with anything is reported as 0.
    """
    def flat(grads: list[Tensor | None], like: list[Tensor | None]) -> Tensor:
        parts = [(g if g is not None else torch.zeros_like(o)).reshape(-1).double() for g, o in zip(grads, like)
                 if g is not None or o is not None]
        return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)

    a, b = flat(pg_grads, reg_grads), flat(reg_grads, pg_grads)
    na, nb = float(a.norm()), float(b.norm())
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
    return {"diag_grad_norm_pg": na, "diag_grad_norm_reg": nb, "diag_grad_cos": cos,
            "diag_pg_share": na / (na + nb) if na + nb > 0 else 0.0}


def group_signal_to_noise(scores: Tensor, shifted: Tensor, group_ids: Tensor) -> dict[str, float]:
    """Within-group reward spread against its reaction to a 1-pixel shift, over complete groups.

    ``scores``, ``shifted``, ``group_ids``: [N] per trajectory. Groups are the rows of the matrix
    :func:`lrpo.eval.stats.signal_to_noise` takes; a group of another size than the first is left out.
    """
    ids = group_ids.tolist()
    order = sorted(range(len(ids)), key=lambda i: (ids[i], i))
    rows: dict[int, list[int]] = {}
    for i in order:
        rows.setdefault(ids[i], []).append(i)
    size = len(next(iter(rows.values()))) if rows else 0
    members = [r for r in rows.values() if len(r) == size and size > 1]
    if not members:
        return {}
    s = np.asarray([[float(scores[i]) for i in r] for r in members])
    p = np.asarray([[float(shifted[i]) for i in r] for r in members])
    res = signal_to_noise(s, p)
    return {"diag_reward_within_std": res["within_std"], "diag_reward_noise_rms": res["noise_rms"],
            "diag_reward_snr": min(res["snr"], 1e6), "diag_rank_agreement": res["rank_agreement"]}
