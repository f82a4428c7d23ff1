"""How much each reward term varies *within* a group, the spread that decides an LRPO update.

    LRPO_WEIGHTS=../shared/weights python bench/reward_group_spread.py --policy runs/bench_pretrain/run

For --faces held-out faces (the first N in sorted order), degrades each once (mild preset, seed =
its index), samples --group candidates with the stochastic sampler (eta 1, --steps steps), scores
them with the composite reward (--preset) and prints, per term: the mean within-group std, the same
times the term's weight (its share of the total's within-group spread) and the std of the group
means (the between-group spread, which group-relative advantages remove).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


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
    from lrpo.inference.restorer import load_policy
    from lrpo.inference.sampling import restore_images
    from lrpo.rewards import PRESETS, RewardInput, build_composite

    policy, diffusion, _ = load_policy(args.policy)
    faces = FaceImageSet(args.data, resolution=policy.cfg.resolution)
    _, held_out = faces.split(args.faces)
    sampler = DDIMSampler(make_alphas_cumprod(diffusion), args.steps, eta=1.0)
    reward = build_composite(args.preset)
    weights = {k: v["weight"] for k, v in PRESETS[args.preset].items()}
    within: dict[str, list[float]] = {}
    means: dict[str, list[float]] = {}
    for i in range(len(held_out)):
        hq = held_out[i][None]
        lq, _ = degrade(hq, DEGRADATION_PRESETS["mild"], torch.Generator().manual_seed(i))
        g = args.group
        out = restore_images(policy, sampler, lq.expand(g, -1, -1, -1), seeds=list(range(g)))
        res = reward(RewardInput(images=out, gt=hq.expand(g, -1, -1, -1)))
        for name, v in {"total": res.scores, **{k: v for k, v in res.details.items() if "/" not in k and k != "total"}}.items():
            within.setdefault(name, []).append(float(v.std(correction=0)))
            means.setdefault(name, []).append(float(v.mean()))
    rows = {
        name: {
            "within_std": round(statistics.mean(within[name]), 4),
            "within_std_x_weight": round(statistics.mean(within[name]) * weights.get(name, 1.0), 4),
            "between_std": round(statistics.pstdev(means[name]), 4),
        }
        for name in within
    }
    print(f"{'term':12s} {'within std':>11s} {'x weight':>9s} {'between std':>12s}")
    for name, r in rows.items():
        print(f"{name:12s} {r['within_std']:11.4f} {r['within_std_x_weight']:9.4f} {r['between_std']:12.4f}")
    print(json.dumps({"bench": "reward_group_spread", "date": time.strftime("%Y-%m-%d"), "policy": args.policy,
                      "faces": len(held_out), "group": args.group, "steps": args.steps, "preset": args.preset, "terms": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
