"""How much each reward term varies *within* a group, the spread that decides an LRPO update.

    LRPO_WEIGHTS=../shared/weights python bench/reward_group_spread.py --policy runs/bench_pretrain/run

For --faces held-out faces (the first N in sorted order), degrades each once (mild preset, seed =
its index), samples --group candidates with the stochastic sampler (eta 1, --steps steps), scores
them with the composite reward (--preset) and prints, per term: the mean within-group std, the same
times the term's weight (its share of the total's within-group spread) and the std of the group
means (the between-group spread, which group-relative advantages remove).

Then the noise against that signal: every candidate is scored again after an imperceptible change
(a 1-pixel shift, a JPEG q98 round-trip), and per term and change the bench prints the RMS of the
score change, the within-group std over it (signal-to-noise) and the mean Spearman agreement of the
group's ranking before and after (lrpo.eval.stats.signal_to_noise). A term whose ranking does not
survive an invisible change gives advantages that are mostly noise.

Last, what dropping a term would change: per term, the mean Spearman agreement within groups of the
total's ranking with and without that term (weight x term subtracted). Near 1: the advantages
barely depend on the term, so dropping it changes little either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrpo.rl.diagnostics import shift_one_pixel

ROOT = Path(__file__).resolve().parents[1]


def jpeg_q98(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] through an 8-bit JPEG round-trip at quality 98."""
    from lrpo.degradation import jpeg_roundtrip

    rgb = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([jpeg_roundtrip(x, 98) for x in rgb])).permute(0, 3, 1, 2).float() / 255


PERTURBATIONS = {"shift1px": shift_one_pixel, "jpeg98": jpeg_q98}


def _terms(res) -> dict[str, torch.Tensor]:
    return {"total": res.scores, **{k: v for k, v in res.details.items() if "/" not in k and k != "total"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="checkpoint or run folder (or a policy YAML)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "faces-hq"))
    ap.add_argument("--faces", type=int, default=6)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="offline")
    args = ap.parse_args()

    from lrpo.config import DEGRADATION_PRESETS
    from lrpo.data.datasets import FaceImageSet
    from lrpo.degradation import degrade
    from lrpo.diffusion.ddim import DDIMSampler
    from lrpo.diffusion.schedules import make_alphas_cumprod
    from lrpo.policies.loading import load_policy
    from lrpo.policies.sampling import restore_images
    from lrpo.eval.stats import rank_agreement, signal_to_noise
    from lrpo.rewards import PRESETS, RewardInput, build_composite

    policy, diffusion, _ = load_policy(args.policy)
    faces = FaceImageSet(args.data, resolution=policy.cfg.resolution)
    _, held_out = faces.split(args.faces)
    sampler = DDIMSampler(make_alphas_cumprod(diffusion), args.steps, eta=1.0)
    reward = build_composite(args.preset)
    weights = {k: v["weight"] for k, v in PRESETS[args.preset].items()}
    within: dict[str, list[float]] = {}
    means: dict[str, list[float]] = {}
    scores: dict[str, list] = {}
    changed: dict[str, dict[str, list]] = {name: {} for name in PERTURBATIONS}
    for i in range(len(held_out)):
        hq = held_out[i][None]
        lq, _ = degrade(hq, DEGRADATION_PRESETS["mild"], torch.Generator().manual_seed(i))
        g = args.group
        out = restore_images(policy, sampler, lq.expand(g, -1, -1, -1), seeds=list(range(g)))
        gt = hq.expand(g, -1, -1, -1)
        res = reward(RewardInput(images=out, gt=gt))
        for name, v in _terms(res).items():
            within.setdefault(name, []).append(float(v.std(correction=0)))
            means.setdefault(name, []).append(float(v.mean()))
            scores.setdefault(name, []).append(v.double().numpy())
        for change, fn in PERTURBATIONS.items():
            for name, v in _terms(reward(RewardInput(images=fn(out), gt=gt))).items():
                changed[change].setdefault(name, []).append(v.double().numpy())
    rows = {
        name: {
            "within_std": round(statistics.mean(within[name]), 4),
            "within_std_x_weight": round(statistics.mean(within[name]) * weights.get(name, 1.0), 4),
            "between_std": round(statistics.pstdev(means[name]), 4),
        }
        for name in within
    }
    for change in PERTURBATIONS:
        for name in rows:
            snr = signal_to_noise(np.stack(scores[name]), np.stack(changed[change][name]))
            rows[name][change] = {k: round(v, 4) for k, v in snr.items()}
    for name in rows:
        if name != "total" and name in weights:
            total = np.stack(scores["total"])
            without = total - weights[name] * np.stack(scores[name])
            rows[name]["rank_agreement_without"] = round(float(np.mean([rank_agreement(a, b) for a, b in zip(total, without)])), 4)
    print(f"{'term':12s} {'within std':>11s} {'x weight':>9s} {'between std':>12s}"
          + "".join(f" {c + ' rms':>12s} {c + ' snr':>10s} {c + ' rank':>10s}" for c in PERTURBATIONS))
    for name, r in rows.items():
        print(f"{name:12s} {r['within_std']:11.4f} {r['within_std_x_weight']:9.4f} {r['between_std']:12.4f}"
              + "".join(f" {r[c]['noise_rms']:12.4f} {r[c]['snr']:10.2f} {r[c]['rank_agreement']:10.3f}" for c in PERTURBATIONS)
              + (f"  total without it ranks alike: {r['rank_agreement_without']:.3f}" if "rank_agreement_without" in r else ""))
    print(json.dumps({"bench": "reward_group_spread", "date": time.strftime("%Y-%m-%d"), "policy": args.policy,
                      "faces": len(held_out), "group": args.group, "steps": args.steps, "preset": args.preset, "terms": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
